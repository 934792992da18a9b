/**
 * The checkpoint formats conversion reads, as a registry: how each is recognised and how it is opened.
 * Adding a format is adding a row here.
 */
import { statSync } from "node:fs";
import { BoundedReader, openFileSource, type ByteSource } from "./bounded_reader.js";
import type { Checkpoint } from "./checkpoint.js";
import { ConversionError } from "./errors.js";
import { readGgufCheckpoint } from "./gguf_llama.js";
import { readHfCheckpoint } from "./hf_directory.js";
import { readLlama2cCheckpoint } from "./llama2c.js";
import { findLlama2cTokenizer } from "./llama2c_tokenizer.js";

export interface CheckpointFormat {
  readonly name: string;
  /** File names a checkpoint of this format may have (a path with one of them is never a Hub id). */
  readonly suffixes: readonly string[];
  /** Whether the tokenizer comes as a file of its own (`--tokenizer`). */
  readonly separate_tokenizer: boolean;
  /** Whether `path` (a directory or a file) is a checkpoint of this format. */
  detect(path: string, isDirectory: boolean): boolean;
  /** Opens it; `open` opens a file so that the caller closes it on failure. */
  read(path: string, open: (path: string) => ByteSource, tokenizer: string | undefined): Checkpoint;
}

function hasGgufMagic(path: string): boolean {
  const source = openFileSource(path);
  try {
    return source.size >= 4 && Buffer.from(new BoundedReader(source).bytes(0, 4, "the magic number")).toString("latin1") === "GGUF";
  } finally {
    source.close();
  }
}

export const CHECKPOINT_FORMATS: readonly CheckpointFormat[] = [
  {
    name: "Hugging Face safetensors directory",
    suffixes: [".safetensors", ".json"],
    separate_tokenizer: false,
    detect: (_path, isDirectory) => isDirectory,
    read: (path) => readHfCheckpoint(path),
  },
  {
    name: "GGUF",
    suffixes: [".gguf"],
    separate_tokenizer: false,
    // By name too, so a .gguf file with a damaged magic is reported as a bad GGUF file, not read as llama2.c.
    detect: (path, isDirectory) => !isDirectory && (path.endsWith(".gguf") || hasGgufMagic(path)),
    read: (path, open) => readGgufCheckpoint(open(path)),
  },
  {
    name: "llama2.c",
    suffixes: [".bin"],
    separate_tokenizer: true,
    // Headerless (the legacy export) and checked as it is read: the format of any other file.
    detect: (_path, isDirectory) => !isDirectory,
    read: (path, open, tokenizer) => readLlama2cCheckpoint(open(path), () => open(tokenizer ?? findLlama2cTokenizer(path))),
  },
];

/** Whether a name ends like a checkpoint file (so it is a path, not a Hub id). */
export function hasCheckpointSuffix(name: string): boolean {
  return CHECKPOINT_FORMATS.some((format) => format.suffixes.some((suffix) => name.endsWith(suffix)));
}

/** Opens a checkpoint of any registered format. */
export function openCheckpoint(source: string, tokenizer?: string): Checkpoint {
  let isDirectory: boolean;
  try {
    isDirectory = statSync(source).isDirectory();
  } catch {
    throw new ConversionError(source, "does not exist");
  }
  const format = CHECKPOINT_FORMATS.find((candidate) => candidate.detect(source, isDirectory))!;
  if (tokenizer !== undefined && !format.separate_tokenizer) {
    throw new ConversionError(tokenizer, "a tokenizer file is only used with llama2.c checkpoints");
  }
  // A file of a directory format (one of its safetensors or its config.json) is not the checkpoint itself.
  const directoryFormat = CHECKPOINT_FORMATS[0];
  if (!isDirectory && directoryFormat.suffixes.some((suffix) => source.endsWith(suffix))) {
    throw new ConversionError(source, "give the Hugging Face model directory (with config.json), not one of its files");
  }
  const opened: ByteSource[] = [];
  try {
    return format.read(source, (path) => {
      const file = openFileSource(path);
      opened.push(file);
      return file;
    }, tokenizer);
  } catch (error) {
    for (const file of opened) file.close();
    throw error;
  }
}

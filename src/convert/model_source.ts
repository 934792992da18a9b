/**
 * Lets every place that names a model also take a convertible checkpoint: the checkpoint is converted once
 * into a cache folder keyed by its content, and later calls reuse that folder.
 */
import { createHash } from "node:crypto";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { homedir } from "node:os";
import { basename, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { checkDirectory } from "../platform/output_paths.js";
import { addModelExport, MODEL_FILES, writeGgufFile, writeModelDirectory, type ConvertDtype } from "./convert.js";
import { hasCheckpointSuffix, openCheckpoint } from "./formats.js";
import { checkModelFiles } from "./model_directory.js";
import { ConversionError, ModelNotFoundError } from "./errors.js";

export interface ResolveModelSourceOptions {
  /** Where converted models are kept. Default `~/.cache/attention-sinks/converted`. */
  cacheDir?: string;
  /** The tokenizer of a llama2.c checkpoint; by default the one `tokenizer.bin` / `tok*.bin` beside it. */
  tokenizer?: string;
  /** Called before a checkpoint is converted (its first use), with where the conversion goes. */
  onConvert?: (source: string, target: string) => void;
  /**
   * The dtype the model will be loaded with (transformers.js's `dtype`): a checkpoint's conversion then holds
   * that file too, added to an earlier conversion if needed. Default: model.onnx only.
   */
  dtype?: string;
}

/** Where converted checkpoints are kept: `$ATTENTION_SINKS_CACHE`, else ~/.cache/attention-sinks/converted. */
export const DEFAULT_CONVERSION_CACHE = process.env.ATTENTION_SINKS_CACHE || join(homedir(), ".cache", "attention-sinks", "converted");

/** Bumped whenever the cache's layout changes. */
const CACHE_FORMAT = "attention-sinks-convert/2";

/** The folders (beside this module's) whose code decides what a conversion writes. */
const CONVERTER_FOLDERS = ["architecture", "convert", "onnx", "positions"];
let converterDigest: string | undefined;

/**
 * A digest of the converter's own code, part of every cache key: a build whose conversion differs in any
 * way never reuses what an older one wrote.
 */
function converterVersion(): string {
  if (converterDigest !== undefined) return converterDigest;
  const hash = createHash("sha256");
  const root = fileURLToPath(new URL("..", import.meta.url));
  for (const folder of CONVERTER_FOLDERS) {
    for (const name of readdirSync(join(root, folder)).filter((file) => file.endsWith(".js")).sort()) {
      hash.update(`\0${folder}/${name}\0`).update(readFileSync(join(root, folder, name)));
    }
  }
  return (converterDigest = hash.digest("hex"));
}

/**
 * What to hand `from_pretrained` for `nameOrPath`: a Hub id as given; the absolute path of a transformers.js
 * model directory (transformers.js reads relative paths such as `models/x` as Hub ids); otherwise the cached
 * conversion of the checkpoint it names, converting it first if needed.
 */
export async function resolveModelSource(nameOrPath: string, options: ResolveModelSourceOptions = {}): Promise<string> {
  if (!existsSync(nameOrPath)) {
    if (looksLikeLocalPath(nameOrPath)) throw new ModelNotFoundError(nameOrPath, "not found locally (no file or folder of that name)");
    if (!HUB_ID.test(nameOrPath) || nameOrPath.includes("..") || nameOrPath.includes("--")) {
      throw new ModelNotFoundError(nameOrPath, 'not found locally, and not a Hugging Face Hub model id either (those are "name" or "owner/name")');
    }
    return nameOrPath;
  }
  if (isTransformersJsDirectory(nameOrPath)) {
    checkModelFiles(nameOrPath);
    return resolve(nameOrPath);
  }
  const dtype = convertibleDtype(nameOrPath, options.dtype);
  const checkpoint = openCheckpoint(nameOrPath, options.tokenizer);
  try {
    const cacheDir = options.cacheDir ?? DEFAULT_CONVERSION_CACHE;
    const target = resolve(cacheDir, await contentKey(checkpoint.inputs));
    if (isTransformersJsDirectory(target)) {
      if (!existsSync(join(target, "onnx", MODEL_FILES[dtype]))) {
        options.onConvert?.(nameOrPath, join(target, "onnx", MODEL_FILES[dtype]));
        await addModelExport(checkpoint, target, dtype);
      }
      return target;
    }
    checkDirectory(cacheDir, "the conversion cache (set by ATTENTION_SINKS_CACHE)");
    options.onConvert?.(nameOrPath, target);
    try {
      await writeModelDirectory(checkpoint, target, { dtype });
    } catch (error) {
      // Another process converting the same checkpoint may have finished first; its result is as good.
      if (!isTransformersJsDirectory(target)) throw error;
    }
    return target;
  } finally {
    checkpoint.close();
  }
}

/**
 * What llama.cpp loads for `path`: a GGUF file of version 2 or 3 as it is; any other checkpoint the package
 * reads (GGUF version 1, which llama.cpp refuses, llama2.c, a Hugging Face directory) converted once into a
 * GGUF version 3 file in the cache, keyed by its content as {@link resolveModelSource} keys directories.
 */
export async function resolveGgufSource(path: string, options: ResolveModelSourceOptions = {}): Promise<string> {
  if (!existsSync(path)) throw new ModelNotFoundError(path, "not found locally (no file or folder of that name)");
  if (llamaCppReadsGguf(path)) {
    if (options.tokenizer !== undefined) throw new ConversionError(options.tokenizer, "a tokenizer file is only used with llama2.c checkpoints");
    return resolve(path);
  }
  const checkpoint = openCheckpoint(path, options.tokenizer);
  try {
    const target = resolve(options.cacheDir ?? DEFAULT_CONVERSION_CACHE, `${await contentKey(checkpoint.inputs)}.gguf`);
    if (existsSync(target)) return target;
    options.onConvert?.(path, target);
    try {
      writeGgufFile(checkpoint, target);
    } catch (error) {
      // Another process converting the same checkpoint may have finished first; its result is as good.
      if (!existsSync(target)) throw error;
    }
    return target;
  } finally {
    checkpoint.close();
  }
}

/** Whether `path` is a file with the GGUF magic and version 2 or 3. */
function llamaCppReadsGguf(path: string): boolean {
  if (statSync(path).isDirectory()) return false;
  const header = Buffer.alloc(8);
  const fd = openSync(path, "r");
  try {
    if (readSync(fd, header, 0, 8, 0) < 8) return false;
  } finally {
    closeSync(fd);
  }
  const version = header.readUInt32LE(4);
  return header.toString("latin1", 0, 4) === "GGUF" && (version === 2 || version === 3);
}

/** The converter's dtype for the one transformers.js is asked to load ("auto" and none: model.onnx). */
function convertibleDtype(source: string, dtype: string | undefined): ConvertDtype {
  if (dtype === undefined || dtype === "auto") return "fp32";
  if (Object.hasOwn(MODEL_FILES, dtype)) return dtype as ConvertDtype;
  throw new ConversionError(
    source,
    `is converted on first use, and the converter writes the dtypes ${Object.keys(MODEL_FILES).join(", ")}, not ${dtype}: ask for one of those`,
  );
}

/** A directory transformers.js loads as is. The cache only ever holds complete ones (they are renamed in). */
function isTransformersJsDirectory(path: string): boolean {
  return existsSync(join(path, "config.json")) && existsSync(join(path, "onnx")) && statSync(join(path, "onnx")).isDirectory();
}

/** A Hub model id: `name` or `owner/name`, of letters, digits, `-`, `_` and `.`. */
const HUB_ID = /^[A-Za-z0-9][\w.-]*(\/[\w.-]+)?$/;

/** Hub ids look like `owner/name`; anything absolute, relative-marked or with a checkpoint suffix is a path. */
function looksLikeLocalPath(name: string): boolean {
  return isAbsolute(name) || /^(\.{1,2}|~)([/\\]|$)/.test(name) || hasCheckpointSuffix(name);
}

/** sha256 over the converter's code and the names, sizes and bytes of every file conversion reads. */
async function contentKey(inputs: readonly string[]): Promise<string> {
  const hash = createHash("sha256").update(CACHE_FORMAT).update(converterVersion());
  const chunk = Buffer.alloc(1 << 20);
  for (const path of inputs) {
    const handle = await open(path, "r");
    try {
      hash.update(`\0${basename(path)}\0${(await handle.stat()).size}\0`);
      for (;;) {
        const { bytesRead } = await handle.read(chunk, 0, chunk.length, null);
        if (bytesRead === 0) break;
        hash.update(chunk.subarray(0, bytesRead));
      }
    } finally {
      await handle.close();
    }
  }
  return hash.digest("hex");
}

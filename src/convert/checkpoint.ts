/**
 * What every checkpoint reader produces: the architecture, the weights under their Hugging Face names (read
 * only when asked, one at a time) and the small JSON files of the output directory.
 */
import { weightShapes, type DecoderSpec, type WeightTensor } from "../architecture/decoder_spec.js";
import { ConversionError } from "./errors.js";
import type { SentencePieceVocab } from "./sentencepiece_tokenizer.js";

/** One stored weight: its shape, known from the header, and how to read it as float32. */
export interface TensorEntry {
  readonly shape: readonly number[];
  /** Why the data cannot be converted (an unsupported dtype), when the header already tells. */
  readonly problem?: string;
  /** The tensor's own name in the file, where the format names it otherwise (GGUF's `output.weight`). */
  readonly stored_name?: string;
  load(): WeightTensor;
}

/** A checkpoint opened for conversion, whatever its format. */
export interface Checkpoint {
  /** The path it was opened from. */
  readonly source: string;
  /** Every file conversion reads, in a fixed order (what identifies the source's content). */
  readonly inputs: readonly string[];
  readonly spec: DecoderSpec;
  /** Weights by Hugging Face Llama name, each shaped as {@link weightShapes} says. */
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  /**
   * The other files of the output directory (`config.json`, `generation_config.json`, `tokenizer.json`,
   * `tokenizer_config.json`), by name, as text.
   */
  readonly files: ReadonlyMap<string, string>;
  /** The SentencePiece vocabulary, with its own scores, when the checkpoint stores one (llama2.c, GGUF). */
  readonly vocabulary?: SentencePieceVocab;
  /** Closes the files it reads from. */
  close(): void;
}

/**
 * Checks, before any tensor data is read, that `tensors` holds exactly the weights `spec` needs, each with
 * the expected shape and a dtype that can be read.
 * @param source the checkpoint, for error messages.
 */
export function checkWeightShapes(source: string, spec: DecoderSpec, tensors: ReadonlyMap<string, TensorEntry>): void {
  const shapes = weightShapes(spec);
  for (const [name, expected] of shapes) {
    const entry = tensors.get(name);
    if (!entry) throw new ConversionError(source, `the weight ${name} is missing`);
    if (entry.problem) throw new ConversionError(source, `the weight ${name}: ${entry.problem}`);
    if (entry.shape.length !== expected.length || entry.shape.some((size, i) => size !== expected[i])) {
      throw new ConversionError(
        source,
        `the weight ${name} has shape [${entry.shape.join(", ")}], but the model's configuration needs [${expected.join(", ")}]`,
      );
    }
  }
  // A weight the architecture does not use means the checkpoint is something else (biases, more layers).
  for (const name of tensors.keys()) {
    if (!shapes.has(name)) throw new ConversionError(source, `the weight ${name} does not belong to the configured model`);
  }
}

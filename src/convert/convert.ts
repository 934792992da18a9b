/**
 * Converting a checkpoint (Hugging Face directory, llama2.c file or GGUF file) into a directory that
 * transformers.js loads offline: config.json, generation_config.json, tokenizer.json, tokenizer_config.json
 * and onnx/model.onnx, plus the file transformers.js loads for another dtype (`model_fp16.onnx`,
 * `model_quantized.onnx` for q8, `model_q4.onnx`, `model_q4f16.onnx`); or into a GGUF version 3 file llama.cpp
 * loads.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, renameSync, rmdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative, resolve } from "node:path";
import { weightShapes } from "../architecture/decoder_spec.js";
import { supportsNewKvOnly, writeDecoderOnnx, type WeightSource } from "../onnx/decoder_export.js";
import { floatDtype, type WeightDtype } from "../onnx/weight_storage.js";
import type { Checkpoint } from "./checkpoint.js";
import { ensureParentDirectory } from "../platform/output_paths.js";
import { ConversionError } from "./errors.js";
import { openCheckpoint } from "./formats.js";
import { checkConfigFile, checkTokenizerFiles } from "./model_directory.js";
import { writeLlamaGguf } from "./gguf_llama.js";

export interface ConvertOptions {
  /** The llama2.c tokenizer file; by default the one `tokenizer.bin` / `tok*.bin` beside the checkpoint. */
  tokenizer?: string;
  /** Also write the file transformers.js loads for this dtype besides onnx/model.onnx. Default fp32. */
  dtype?: ConvertDtype;
  /** Called after each weight is read, with the weights done so far and the total. */
  onProgress?: (done: number, total: number) => void;
}

export type ConvertDtype = WeightDtype;

/** The file transformers.js's `from_pretrained(dir, { dtype })` looks for, per dtype. */
export const MODEL_FILES: Readonly<Record<ConvertDtype, string>> = {
  fp32: "model.onnx",
  fp16: "model_fp16.onnx",
  q8: "model_quantized.onnx",
  q4: "model_q4.onnx",
  q4f16: "model_q4f16.onnx",
};

/**
 * Converts `source` into the transformers.js model directory `outDir`, which must not exist yet (or be
 * empty). Nothing appears at `outDir` unless conversion succeeds.
 */
export async function convertCheckpoint(source: string, outDir: string, options: ConvertOptions = {}): Promise<void> {
  const checkpoint = openCheckpoint(source, options.tokenizer);
  try {
    await writeModelDirectory(checkpoint, outDir, options);
  } finally {
    checkpoint.close();
  }
}

/**
 * Converts `source` into the GGUF version 3 file `outFile` (llama architecture, float32 weights), which must
 * not exist yet. Nothing appears at `outFile` unless conversion succeeds. GGUF inputs of versions 1 and 2,
 * which llama.cpp refuses, are upgraded this way.
 */
export async function convertCheckpointToGguf(source: string, outFile: string, options: Pick<ConvertOptions, "tokenizer" | "onProgress"> = {}): Promise<void> {
  if (existsSync(resolve(outFile))) throw new ConversionError(outFile, "already exists");
  const checkpoint = openCheckpoint(source, options.tokenizer);
  try {
    writeGgufFile(checkpoint, outFile, options.onProgress);
  } finally {
    checkpoint.close();
  }
}

/**
 * Writes `checkpoint` as the GGUF file `outFile` through a temporary file beside it, renamed into place at
 * the end, so a failed or interrupted conversion never leaves a partial `outFile`.
 */
export function writeGgufFile(checkpoint: Checkpoint, outFile: string, onProgress?: (done: number, total: number) => void): void {
  const target = resolve(outFile);
  mkdirSync(dirname(target), { recursive: true });
  const staging = join(dirname(target), `.${basename(target)}.partial-${randomBytes(6).toString("hex")}`);
  try {
    const total = weightShapes(checkpoint.spec).size;
    let done = 0;
    writeLlamaGguf(checkpoint, staging, () => onProgress?.(++done, total));
    if (existsSync(target)) throw new ConversionError(outFile, "was created by another process during conversion");
    renameSync(staging, target);
  } finally {
    rmSync(staging, { force: true });
  }
}

/**
 * Writes the model directory into a temporary folder beside `outDir` and renames it into place at the end,
 * so a failed or interrupted conversion never leaves a half-written `outDir`.
 */
export async function writeModelDirectory(
  checkpoint: Checkpoint,
  outDir: string,
  options: Omit<ConvertOptions, "tokenizer"> = {},
): Promise<void> {
  const target = resolve(outDir);
  if (existsSync(target) && (!statSync(target).isDirectory() || readdirSync(target).length > 0)) {
    throw new ConversionError(outDir, "already exists and is not an empty directory");
  }
  ensureParentDirectory(outDir);
  // mkdirSync (not mkdtemp, which makes it private) so the renamed directory gets the usual permissions.
  const staging = join(dirname(target), `.${basename(target)}.partial-${randomBytes(6).toString("hex")}`);
  mkdirSync(staging);
  try {
    for (const [name, text] of checkpoint.files) writeFileSync(join(staging, name), text);
    checkStagedFiles(checkpoint, staging);
    mkdirSync(join(staging, "onnx"));
    const dtypes: ConvertDtype[] = ["fp32"];
    if (options.dtype !== undefined && options.dtype !== "fp32") dtypes.push(options.dtype);
    await writeExports(checkpoint, staging, dtypes, options.onProgress);
    try {
      if (existsSync(target)) rmdirSync(target);
      renameSync(staging, target);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ENOTEMPTY" || code === "EEXIST") {
        throw new ConversionError(outDir, "was filled by another process during conversion", { cause: error });
      }
      throw error;
    }
  } catch (error) {
    rmSync(staging, { recursive: true, force: true });
    throw error;
  }
}

/**
 * Adds the file of `dtype` to a model directory this converter wrote from `checkpoint` (a conversion cached
 * for another dtype); the file appears atomically.
 */
export async function addModelExport(checkpoint: Checkpoint, dir: string, dtype: ConvertDtype): Promise<void> {
  await writeExports(checkpoint, dir, [dtype]);
}

async function writeExports(checkpoint: Checkpoint, dir: string, dtypes: readonly ConvertDtype[], onProgress?: ConvertOptions["onProgress"]): Promise<void> {
  const total = weightShapes(checkpoint.spec).size * dtypes.length;
  let done = 0;
  for (const dtype of dtypes) {
    const weights: WeightSource = {
      load(name) {
        const entry = checkpoint.tensors.get(name);
        if (!entry) throw new ConversionError(checkpoint.source, `the weight ${name} is missing`);
        const tensor = entry.load();
        const described = entry.stored_name === undefined ? name : `${name} (${entry.stored_name} in the file)`;
        checkWeightValues(checkpoint.source, described, tensor.data, dtype);
        onProgress?.(++done, total);
        return tensor;
      },
    };
    // The package's own exports let its cache be written in place (src/onnx/new_kv_only.ts) where the model allows.
    const options = { dtype, new_kv_only: supportsNewKvOnly(checkpoint.spec) };
    await writeDecoderOnnx(checkpoint.spec, weights, join(dir, "onnx", MODEL_FILES[dtype]), options);
  }
}

/**
 * The JSON files as transformers.js will read them, checked before the long export, so a source whose
 * tokenizer cannot serve the model fails here, naming the source, and never reaches the conversion cache.
 */
function checkStagedFiles(checkpoint: Checkpoint, staging: string): void {
  let tokens: number;
  try {
    checkConfigFile(staging);
    tokens = checkTokenizerFiles(staging);
  } catch (error) {
    if (!(error instanceof ConversionError)) throw error;
    throw new ConversionError(checkpoint.source, `its ${relative(staging, error.file)} ${error.problem}`, { cause: error });
  }
  // Real tokenizers may cover a little less than a padded embedding; half of it is a truncated or wrong file.
  const { vocab_size } = checkpoint.spec;
  if (tokens < vocab_size / 2) {
    throw new ConversionError(
      checkpoint.source,
      `its tokenizer.json covers ${tokens} token ids, but the model has a vocabulary of ${vocab_size}: ` +
        "the tokenizer is truncated or belongs to another model",
    );
  }
}

/** float32 magnitudes from here up round to Infinity in float16 (its largest finite value is 65504). */
const FLOAT16_OVERFLOW = 65520;

/**
 * Refuses a weight that holds NaN or an infinity (a corrupt checkpoint: every output would be NaN, decoded
 * as endless `<unk>`), or, for an fp16 export, a value float16 cannot hold. One pass over data the converter
 * holds anyway.
 */
function checkWeightValues(source: string, weight: string, data: Float32Array, dtype: ConvertDtype): void {
  let largest = 0;
  let largestAt = 0;
  for (let i = 0; i < data.length; i++) {
    const magnitude = Math.abs(data[i]);
    // NaN fails every comparison, so it is caught by this one.
    if (!(magnitude < Infinity)) {
      let bad = 0;
      for (let j = i; j < data.length; j++) if (!Number.isFinite(data[j])) bad++;
      throw new ConversionError(
        source,
        `the weight ${weight} holds ${data[i]} at index ${i} (${bad} of its ${data.length} values are not finite): ` +
          "the checkpoint is corrupt, and a model made from it would compute NaN",
      );
    }
    if (magnitude > largest) {
      largest = magnitude;
      largestAt = i;
    }
  }
  if (floatDtype(dtype) === "fp16" && largest >= FLOAT16_OVERFLOW) {
    throw new ConversionError(
      source,
      `the weight ${weight} holds ${data[largestAt]} at index ${largestAt}, beyond float16's largest value 65504: ` +
        `an ${dtype} export would store it as Infinity; convert with dtype fp32 (the default), q8 or q4`,
    );
  }
}

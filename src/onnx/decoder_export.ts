/**
 * Writing a decoder graph to ONNX: in memory with weights inline, or streamed to disk weight by weight, with
 * weights in an external data file when one protobuf message could not hold them. The graph itself is
 * src/onnx/decoder_graph.ts.
 */
import { basename } from "node:path";
import { rm } from "node:fs/promises";
import { validateDecoderSpec, weightShapes, type DecoderSpec, type DecoderWeights, type WeightTensor } from "../architecture/decoder_spec.js";
import { canReturnNewKvOnly, decoderGraph, type AttentionOps, type GraphStyle } from "./decoder_graph.js";
import { writeFilesAtomically, type FileContent } from "./model_file.js";
import { encodeModel, type ExternalRange } from "./onnx_model.js";
import type { Chunk, Deferred } from "./protobuf.js";
import { checkWeightShape, encodeStoredWeight, storedByteLength, type StoredWeight, type WeightDtype } from "./weight_storage.js";

/** Supplies weights by name (see `weightShapes`); the builder loads each weight exactly once. */
export interface WeightSource {
  load(name: string): WeightTensor | Promise<WeightTensor>;
}

export interface OnnxExportOptions {
  /**
   * How weights are stored: float32, float16, or linear layers quantized as transformers.js's `q8`
   * (MatMulInteger on dynamically quantized inputs), `q4` and `q4f16` (MatMulNBits; float16 elsewhere) files
   * hold them. Activations are float32 throughout except where a quantized op needs otherwise. Default fp32.
   */
  dtype?: WeightDtype;
  /** The type of `past_key_values.*` and `present.*` (as fp16 ONNX exports keep their cache). Default fp32. */
  kv_dtype?: "fp32" | "fp16";
  /** The type of `logits` (fp16 exports return float16 logits for every position). Default fp32. */
  logits_dtype?: "fp32" | "fp16";
  /** Whether a RoPE graph takes `position_ids` (otherwise positions are cache slots). Default true. */
  position_ids?: boolean;
  /** Whether the graph takes `num_logits_to_keep`, as Optimum's exports do. Default false. */
  num_logits_to_keep?: boolean;
  /** A merged decoder that takes `use_cache_branch` (false: the past is ignored), as Optimum merges them. Default false. */
  use_cache_branch?: boolean;
  /** Attention from standard ops (default) or from onnxruntime's contrib ops as onnxruntime-genai emits them. */
  attention?: AttentionOps;
  /** Residual adds fused into Skip*LayerNormalization, as onnxruntime-genai emits them. Default false. */
  fused_norms?: boolean;
  /**
   * Whether the graph can also return only the new tokens' keys and values, for a cache the package writes in
   * place (src/onnx/new_kv_only.ts); to transformers.js it stays an ordinary decoder. Needs position_ids and
   * standard attention, and no sliding window (`canReturnNewKvOnly`). Default false, as exporters write.
   */
  new_kv_only?: boolean;
  /** Contrib attention: the rows of the baked cos/sin tables (max_position_embeddings). Default 4096. */
  rotary_table_length?: number;
  /**
   * `writeDecoderOnnx` only: when the stored weights exceed this many bytes they go to an external data file
   * `<path>_data` next to the model, because one protobuf message cannot exceed 2 GiB. Default 1.9e9.
   */
  external_data_threshold_bytes?: number;
}

const DEFAULT_EXTERNAL_DATA_THRESHOLD = 1.9e9;
const DEFAULT_ROTARY_TABLE_LENGTH = 4096;
const PROTOBUF_MAX_BYTES = 2 ** 31 - 1;

/** Builds the whole model in memory (weights inline); for models over 2 GiB use `writeDecoderOnnx`. */
export function buildDecoderOnnx(
  spec: DecoderSpec,
  weights: DecoderWeights,
  options: OnnxExportOptions = {},
): Uint8Array {
  validateDecoderSpec(spec);
  for (const [name, shape] of weightShapes(spec)) checkWeightShape(name, shape, weights.get(name));
  const chunks = encodeModel(decoderGraph(spec, graphStyle(options), inlineWeight));
  const model = new Uint8Array(protobufSize(chunks, "use writeDecoderOnnx, which stores weights externally"));
  let offset = 0;
  for (const chunk of chunks) {
    const bytes =
      chunk instanceof Uint8Array ? chunk : encodeStoredWeight(chunk.payload, weights.get(chunk.payload.name)!);
    model.set(bytes, offset);
    offset += bytes.byteLength;
  }
  return model;
}

/**
 * Writes the model to `path`, streaming: every length is computed from the spec's shapes first, then weights
 * are loaded and written one at a time. Output appears atomically (written as `.partial`, then renamed); on
 * error nothing is left behind. Large models put their weights in `<path>_data` (ONNX external data).
 */
export async function writeDecoderOnnx(
  spec: DecoderSpec,
  weights: WeightSource,
  path: string,
  options: OnnxExportOptions = {},
): Promise<void> {
  validateDecoderSpec(spec);
  let weightBytes = 0;
  decoderGraph(spec, graphStyle(options), (weight) => {
    weightBytes += storedByteLength(weight);
    return inlineWeight(weight);
  });
  const external = weightBytes > (options.external_data_threshold_bytes ?? DEFAULT_EXTERNAL_DATA_THRESHOLD);

  const dataPath = `${path}_data`;
  const externalOrder: StoredWeight[] = [];
  let dataOffset = 0;
  const placeExternally = (weight: StoredWeight): ExternalRange => {
    const range = { location: basename(dataPath), offset: dataOffset, length: storedByteLength(weight) };
    dataOffset += range.length;
    externalOrder.push(weight);
    return range;
  };
  const chunks = encodeModel(decoderGraph(spec, graphStyle(options), external ? placeExternally : inlineWeight));
  protobufSize(chunks, "lower external_data_threshold_bytes");

  // A quantized weight's parts are stored one after another: the last weight loaded serves them all.
  let last: { name: string; tensor: WeightTensor } | undefined;
  const loadStored = async (weight: StoredWeight): Promise<Uint8Array> => {
    if (last?.name !== weight.name) {
      const tensor = await weights.load(weight.name);
      checkWeightShape(weight.name, weight.shape, tensor);
      last = { name: weight.name, tensor };
    }
    return encodeStoredWeight(weight, last.tensor);
  };
  const modelFile: FileContent = {
    path,
    async write(sink) {
      for (const chunk of chunks) {
        await sink.write(chunk instanceof Uint8Array ? chunk : await loadStored(chunk.payload));
      }
    },
  };
  if (!external) {
    await writeFilesAtomically([modelFile]);
    // A data file from an earlier export of this path would describe weights the new model does not use.
    await rm(dataPath, { force: true });
    return;
  }
  const dataFile: FileContent = {
    path: dataPath,
    async write(sink) {
      for (const weight of externalOrder) await sink.write(await loadStored(weight));
    },
  };
  await writeFilesAtomically([dataFile, modelFile]);
}

/** Whether a graph of this spec, exported with these options, can take `new_kv_only: true`. */
export function supportsNewKvOnly(spec: DecoderSpec, options: OnnxExportOptions = {}): boolean {
  return canReturnNewKvOnly(spec, graphStyle(options));
}

function graphStyle(options: OnnxExportOptions): GraphStyle {
  return {
    weights: options.dtype ?? "fp32",
    kv: options.kv_dtype ?? "fp32",
    logits: options.logits_dtype ?? "fp32",
    position_ids: options.position_ids ?? true,
    num_logits_to_keep: options.num_logits_to_keep ?? false,
    use_cache_branch: options.use_cache_branch ?? false,
    attention: options.attention ?? "standard",
    fused_norms: options.fused_norms ?? false,
    rotary_table_length: options.rotary_table_length ?? DEFAULT_ROTARY_TABLE_LENGTH,
    new_kv_only: options.new_kv_only ?? false,
  };
}

function inlineWeight(weight: StoredWeight): Deferred<StoredWeight> {
  return { byteLength: storedByteLength(weight), payload: weight };
}

/** The encoded size, checked against the limit every protobuf reader enforces. */
function protobufSize(chunks: readonly Chunk<StoredWeight>[], remedy: string): number {
  const size = chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0);
  if (size > PROTOBUF_MAX_BYTES) {
    throw new Error(`the ONNX model would take ${size} bytes, over protobuf's 2 GiB limit: ${remedy}`);
  }
  return size;
}

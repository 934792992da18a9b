/**
 * GGUF files of the "llama" architecture with a SentencePiece ("llama") tokenizer, as llama.cpp writes
 * them: hyper-parameters under `llama.*`, the vocabulary under `tokenizer.ggml.*`, tensors under ggml
 * names. llama.cpp rotates RoPE pairs (2i, 2i + 1) for this architecture, so queries and keys are stored
 * in Meta's interleaved layout (converters un-permute Hugging Face weights into it): they are permuted into
 * rotate_half on reading, and back on writing.
 */
import { weightShapes, type DecoderSpec, type WeightTensor } from "../architecture/decoder_spec.js";
import type { RopeScaling } from "../positions/rope.js";
import { basename } from "node:path";
import { BoundedReader, type ByteSource } from "./bounded_reader.js";
import { checkWeightShapes, type Checkpoint, type TensorEntry } from "./checkpoint.js";
import { ConversionError } from "./errors.js";
import {
  describeGgufValue,
  readGguf,
  readGgufTensor,
  writeGguf,
  type GgufEntry,
  type GgufFile,
  type GgufValue,
  type GgufTensorInfo,
  type GgufTensorSource,
  DECODABLE_GGML_TYPES,
} from "./gguf.js";
import { llamaDecoderSpec, llamaModelFiles, type LlamaModelInfo } from "./hf_llama.js";
import { withInterleavedQueryKey, withRotateHalfQueryKey } from "./rope_permutation.js";
import {
  sentencePieceTokenizerFiles,
  sentencePieceVocabFromTokenizerJson,
  type PieceKind,
  type SentencePieceVocab,
} from "./sentencepiece_tokenizer.js";

/** GGUF's tokenizer.ggml.token_type values, from 1. */
const PIECE_KINDS: readonly PieceKind[] = ["normal", "unknown", "control", "user_defined", "unused", "byte"];

/** Hugging Face names of the per-layer ggml tensors. */
const LAYER_TENSORS: ReadonlyMap<string, string> = new Map([
  ["attn_norm", "input_layernorm"],
  ["attn_q", "self_attn.q_proj"],
  ["attn_k", "self_attn.k_proj"],
  ["attn_v", "self_attn.v_proj"],
  ["attn_output", "self_attn.o_proj"],
  ["ffn_norm", "post_attention_layernorm"],
  ["ffn_gate", "mlp.gate_proj"],
  ["ffn_down", "mlp.down_proj"],
  ["ffn_up", "mlp.up_proj"],
]);

const GLOBAL_TENSORS: ReadonlyMap<string, string> = new Map([
  ["token_embd.weight", "model.embed_tokens.weight"],
  ["output_norm.weight", "model.norm.weight"],
  ["output.weight", "lm_head.weight"],
]);

/** Opens a GGUF llama checkpoint. */
export function readGgufCheckpoint(source: ByteSource): Checkpoint {
  const reader = new BoundedReader(source);
  const { gguf, spec, files, vocabulary: pieces } = readDescription(reader);
  const tensors = new Map<string, TensorEntry>();
  for (const tensor of gguf.tensors) tensors.set(huggingFaceName(reader, tensor), tensorEntry(reader, tensor));
  checkWeightShapes(reader.name, spec, tensors);
  return {
    source: reader.name,
    inputs: [reader.name],
    spec,
    tensors: withRotateHalfQueryKey(spec, tensors),
    files,
    vocabulary: pieces,
    close() {
      source.close();
    },
  };
}

/** What a GGUF llama model is, read from its header: the architecture and the files of its model directory. */
export interface GgufModelDescription {
  spec: DecoderSpec;
  /** `config.json`, `generation_config.json`, `tokenizer.json` and `tokenizer_config.json`, as text. */
  files: Map<string, string>;
}

/**
 * Describes a GGUF llama model without reading its weights, whatever their types (engines that run GGUF
 * files read quantizations the converter cannot).
 */
export function describeGgufModel(source: ByteSource): GgufModelDescription {
  const reader = new BoundedReader(source);
  const { gguf, spec, files } = readDescription(reader);
  for (const tensor of gguf.tensors) huggingFaceName(reader, tensor);
  return { spec, files };
}

function readDescription(reader: BoundedReader): { gguf: GgufFile; spec: DecoderSpec; files: Map<string, string>; vocabulary: SentencePieceVocab } {
  const gguf = readGguf(reader);
  const meta = new Metadata(reader, gguf.metadata);
  const architecture = meta.string("general.architecture");
  if (architecture !== "llama") throw reader.fail(`architecture "${architecture}" is not supported (supported: llama)`);
  if (meta.integer("llama.expert_count", 0) > 0) throw reader.fail("mixture-of-experts models are not supported");

  const byName = new Map(gguf.tensors.map((tensor) => [tensor.name, tensor]));
  const embedding = byName.get("token_embd.weight");
  if (!embedding || embedding.dims.length !== 2) throw reader.fail("has no two-dimensional token_embd.weight tensor");
  const heads = meta.integer("llama.attention.head_count");
  const hiddenSize = meta.integer("llama.embedding_length");
  const keyLength = meta.integer("llama.attention.key_length", hiddenSize / heads);
  if (meta.integer("llama.attention.value_length", keyLength) !== keyLength) {
    throw reader.fail("different key and value head sizes are not supported");
  }
  if (meta.integer("llama.rope.dimension_count", keyLength) !== keyLength) {
    throw reader.fail("partial rotary embeddings are not supported for llama");
  }
  const spec = llamaDecoderSpec(
    {
      vocab_size: embedding.dims[1],
      hidden_size: hiddenSize,
      intermediate_size: meta.integer("llama.feed_forward_length"),
      num_layers: meta.integer("llama.block_count"),
      num_heads: heads,
      num_kv_heads: meta.integer("llama.attention.head_count_kv", heads),
      head_dim: keyLength,
      norm_eps: meta.positive("llama.attention.layer_norm_rms_epsilon"),
      rope_theta: meta.positive("llama.rope.freq_base", 10000),
      rope_scaling: ropeScaling(meta),
      tie_word_embeddings: !byName.has("output.weight"),
    },
    (problem) => reader.fail(problem),
  );
  const info: LlamaModelInfo = {
    maxPositions: meta.integer("llama.context_length", undefined, 1),
    bosId: meta.integer("tokenizer.ggml.bos_token_id", 1),
    eosId: meta.integer("tokenizer.ggml.eos_token_id", 2),
  };
  const pieces = vocabulary(meta, spec.vocab_size, info);
  const files = llamaModelFiles(spec, info, sentencePieceTokenizerFiles(pieces, reader.name));
  return { gguf, spec, files, vocabulary: pieces };
}

/** `blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, and so on; other tensors are refused. */
function huggingFaceName(reader: BoundedReader, tensor: GgufTensorInfo): string {
  const ggmlName = tensor.name;
  const layer = /^blk\.(0|[1-9]\d*)\.([a-z_]+)\.weight$/.exec(ggmlName);
  const suffix = layer ? LAYER_TENSORS.get(layer[2]) : undefined;
  const name = layer ? (suffix === undefined ? undefined : `model.layers.${layer[1]}.${suffix}.weight`) : GLOBAL_TENSORS.get(ggmlName);
  if (name === undefined) {
    const hint = ggmlName === "rope_freqs.weight" ? " (Llama 3 RoPE frequency factors are not supported)" : "";
    throw reader.fail(`unexpected tensor ${ggmlName}${hint}`);
  }
  return name;
}

function tensorEntry(reader: BoundedReader, tensor: GgufTensorInfo): TensorEntry {
  // ggml lists the fastest-varying dimension first.
  const shape = [...tensor.dims].reverse();
  const decodable = tensor.type.decode !== undefined;
  return {
    shape,
    stored_name: tensor.name,
    problem: decodable
      ? undefined
      : `${tensor.type.name} tensors cannot be converted (supported: ${DECODABLE_GGML_TYPES.join(", ")})`,
    load: (): WeightTensor => ({ shape, data: readGgufTensor(reader, tensor) }),
  };
}

function ropeScaling(meta: Metadata): RopeScaling | undefined {
  const type = meta.string("llama.rope.scaling.type", "none");
  if (type === "none") return undefined;
  if (type !== "linear") throw meta.reader.fail(`RoPE scaling "${type}" is not supported (supported: none, linear)`);
  return { rope_type: "linear", factor: meta.positive("llama.rope.scaling.factor") };
}

/** The SentencePiece vocabulary under `tokenizer.ggml.*`. */
function vocabulary(meta: Metadata, vocabSize: number, info: LlamaModelInfo): SentencePieceVocab {
  const model = meta.string("tokenizer.ggml.model");
  if (model !== "llama") {
    throw meta.reader.fail(`tokenizer model "${model}" is not supported (supported: llama, the SentencePiece BPE)`);
  }
  const tokens = meta.array("tokenizer.ggml.tokens", vocabSize, "string");
  const scores = meta.array("tokenizer.ggml.scores", vocabSize, "number");
  const types = meta.has("tokenizer.ggml.token_type") ? meta.array("tokenizer.ggml.token_type", vocabSize, "number") : undefined;
  const pieces = tokens.map((text, id) => {
    const kind = types ? PIECE_KINDS[types[id] - 1] : /^<0x[0-9A-F]{2}>$/.test(text) ? "byte" : "normal";
    if (!kind) throw meta.reader.fail(`token ${id} has unknown token type ${types?.[id]}`);
    return { text, score: scores[id], kind };
  });
  return {
    pieces,
    bosId: info.bosId,
    eosId: info.eosId,
    unkId: meta.integer("tokenizer.ggml.unknown_token_id", 0),
    padId: meta.has("tokenizer.ggml.padding_token_id") ? meta.integer("tokenizer.ggml.padding_token_id") : undefined,
    addBos: meta.boolean("tokenizer.ggml.add_bos_token", true),
    addEos: meta.boolean("tokenizer.ggml.add_eos_token", false),
    addSpacePrefix: meta.boolean("tokenizer.ggml.add_space_prefix", true),
    modelMaxLength: info.maxPositions,
  };
}

/** Typed access to GGUF metadata; a missing key without a default, or a wrong type, is an error. */
class Metadata {
  constructor(
    readonly reader: BoundedReader,
    private readonly values: ReadonlyMap<string, GgufValue>,
  ) {}

  has(key: string): boolean {
    return this.values.has(key);
  }

  private get<T>(key: string, expected: string, accept: (value: GgufValue) => value is GgufValue & T, fallback?: T): T {
    const value = this.values.get(key);
    if (value === undefined) {
      if (fallback === undefined) throw this.reader.fail(`metadata ${key} is missing`);
      return fallback;
    }
    if (!accept(value)) throw this.reader.fail(`metadata ${key} is ${describeGgufValue(value)}, expected ${expected}`);
    return value;
  }

  integer(key: string, fallback?: number, min = 0): number {
    const expected = min === 0 ? "a non-negative integer" : `an integer of at least ${min}`;
    return this.get(key, expected, (v): v is number => Number.isSafeInteger(v) && (v as number) >= min, fallback);
  }

  /** A float that must be finite and positive (an epsilon, a base, a factor). */
  positive(key: string, fallback?: number): number {
    return this.get(key, "a finite positive number", (v): v is number => typeof v === "number" && Number.isFinite(v) && v > 0, fallback);
  }

  string(key: string, fallback?: string): string {
    return this.get(key, "a string", (v): v is string => typeof v === "string", fallback);
  }

  boolean(key: string, fallback: boolean): boolean {
    return this.get(key, "a boolean", (v): v is boolean => typeof v === "boolean", fallback);
  }

  /** An array of `length` strings or numbers. */
  array<K extends "string" | "number">(key: string, length: number, kind: K): (K extends "string" ? string : number)[] {
    const isArray = (v: GgufValue): v is GgufValue[] => Array.isArray(v);
    const values = this.get(key, `an array of ${kind}s`, isArray);
    if (values.length !== length) {
      throw this.reader.fail(`metadata ${key} has ${values.length} entries, but the vocabulary has ${length} tokens`);
    }
    if (!values.every((value) => typeof value === kind)) throw this.reader.fail(`metadata ${key} is not an array of ${kind}s`);
    return values as (K extends "string" ? string : number)[];
  }
}


/** Hugging Face weight name -> ggml tensor name, the inverse of {@link huggingFaceName}. */
function ggmlName(name: string): string {
  const layer = /^model\.layers\.(\d+)\.(.+)\.weight$/.exec(name);
  const table = layer ? LAYER_TENSORS : GLOBAL_TENSORS;
  for (const [ggml, hf] of table) {
    if (layer ? hf === layer[2] : hf === name) return layer ? `blk.${layer[1]}.${ggml}.weight` : ggml;
  }
  throw new Error(`no ggml name for the weight ${name}`);
}

/**
 * Writes a checkpoint as a GGUF version 3 file of the llama architecture with float32 weights, as llama.cpp
 * loads it: a tied classifier is left out (llama.cpp then reuses token_embd), queries and keys go back to
 * the interleaved layout, and the vocabulary is stored as SentencePiece pieces.
 * @param onWeight called after each weight is written.
 */
export function writeLlamaGguf(checkpoint: Checkpoint, path: string, onWeight?: () => void): void {
  const { spec, files, source } = checkpoint;
  const fail = (problem: string) => new ConversionError(source, problem);
  if (spec.positions.kind !== "rope") throw fail("only rotary-position (llama) models can be written as GGUF");
  const { rope } = spec.positions;
  const config = JSON.parse(files.get("config.json") ?? "{}") as Record<string, unknown>;
  const firstId = (value: unknown, fallback: number) => (typeof value === "number" ? value : Array.isArray(value) && typeof value[0] === "number" ? value[0] : fallback);
  const info = {
    bosId: firstId(config.bos_token_id, 1),
    eosId: firstId(config.eos_token_id, 2),
    vocabSize: spec.vocab_size,
    modelMaxLength: typeof config.max_position_embeddings === "number" ? config.max_position_embeddings : 2048,
  };
  const vocab =
    checkpoint.vocabulary ??
    sentencePieceVocabFromTokenizerJson(files.get("tokenizer.json") ?? "{}", files.get("tokenizer_config.json") ?? "{}", info, `${source} (tokenizer.json)`);

  const metadata = new Map<string, GgufEntry>();
  const u32 = (key: string, value: number) => metadata.set(key, { type: "uint32", value });
  const f32 = (key: string, value: number) => metadata.set(key, { type: "float32", value });
  metadata.set("general.architecture", { type: "string", value: "llama" });
  metadata.set("general.name", { type: "string", value: basename(source) });
  u32("general.file_type", 0); // all float32
  u32("llama.vocab_size", spec.vocab_size);
  u32("llama.context_length", info.modelMaxLength);
  u32("llama.embedding_length", spec.hidden_size);
  u32("llama.block_count", spec.num_layers);
  u32("llama.feed_forward_length", spec.intermediate_size);
  u32("llama.attention.head_count", spec.num_heads);
  u32("llama.attention.head_count_kv", spec.num_kv_heads);
  u32("llama.attention.key_length", spec.head_dim);
  u32("llama.attention.value_length", spec.head_dim);
  u32("llama.rope.dimension_count", rope.rotary_dim);
  f32("llama.attention.layer_norm_rms_epsilon", spec.norm_eps);
  f32("llama.rope.freq_base", rope.theta);
  if (rope.scaling) {
    if (rope.scaling.rope_type !== "linear") throw fail(`RoPE scaling "${rope.scaling.rope_type}" cannot be written as GGUF (supported: none, linear)`);
    metadata.set("llama.rope.scaling.type", { type: "string", value: "linear" });
    f32("llama.rope.scaling.factor", rope.scaling.factor);
  }
  metadata.set("tokenizer.ggml.model", { type: "string", value: "llama" });
  metadata.set("tokenizer.ggml.tokens", { type: "array", element: "string", values: vocab.pieces.map((piece) => piece.text) });
  metadata.set("tokenizer.ggml.scores", { type: "array", element: "float32", values: vocab.pieces.map((piece) => piece.score) });
  metadata.set("tokenizer.ggml.token_type", { type: "array", element: "int32", values: vocab.pieces.map((piece) => PIECE_KINDS.indexOf(piece.kind) + 1) });
  u32("tokenizer.ggml.bos_token_id", vocab.bosId);
  u32("tokenizer.ggml.eos_token_id", vocab.eosId);
  u32("tokenizer.ggml.unknown_token_id", vocab.unkId);
  if (vocab.padId !== undefined) u32("tokenizer.ggml.padding_token_id", vocab.padId);
  metadata.set("tokenizer.ggml.add_bos_token", { type: "bool", value: vocab.addBos });
  metadata.set("tokenizer.ggml.add_eos_token", { type: "bool", value: vocab.addEos });
  metadata.set("tokenizer.ggml.add_space_prefix", { type: "bool", value: vocab.addSpacePrefix });

  const weights = withInterleavedQueryKey(spec, checkpoint.tensors);
  const tensors = [...weightShapes(spec)].map(([name, shape]): GgufTensorSource => ({
    name: ggmlName(name),
    // ggml lists the fastest-varying dimension first.
    dims: [...shape].reverse(),
    load() {
      const entry = weights.get(name);
      if (!entry) throw fail(`the weight ${name} is missing`);
      const { data } = entry.load();
      onWeight?.();
      return data;
    },
  }));
  writeGguf(path, metadata, tensors);
}

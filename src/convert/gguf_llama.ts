/**
 * GGUF files of the "llama" architecture with a SentencePiece ("llama") tokenizer, as llama.cpp writes
 * them: hyper-parameters under `llama.*`, the vocabulary under `tokenizer.ggml.*`, tensors under ggml
 * names. llama.cpp rotates RoPE pairs (2i, 2i + 1) for this architecture, so queries and keys are stored
 * in Meta's interleaved layout (converters un-permute Hugging Face weights into it) and are permuted into
 * rotate_half on reading.
 */
import type { WeightTensor } from "../architecture/decoder_spec.js";
import type { RopeScaling } from "../positions/rope.js";
import { BoundedReader, type ByteSource } from "./bounded_reader.js";
import { checkWeightShapes, type Checkpoint, type TensorEntry } from "./checkpoint.js";
import { describeGgufValue, readGguf, readGgufTensor, type GgufValue, type GgufTensorInfo, DECODABLE_GGML_TYPES } from "./gguf.js";
import { llamaDecoderSpec, llamaModelFiles, type LlamaModelInfo } from "./hf_llama.js";
import { withRotateHalfQueryKey } from "./rope_permutation.js";
import { sentencePieceTokenizerFiles, type PieceKind, type SentencePieceVocab } from "./sentencepiece_tokenizer.js";

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

  const tensors = new Map<string, TensorEntry>();
  for (const tensor of gguf.tensors) {
    const name = huggingFaceName(tensor.name);
    if (!name) {
      const hint = tensor.name === "rope_freqs.weight" ? " (Llama 3 RoPE frequency factors are not supported)" : "";
      throw reader.fail(`unexpected tensor ${tensor.name}${hint}`);
    }
    tensors.set(name, tensorEntry(reader, tensor));
  }
  checkWeightShapes(reader.name, spec, tensors);

  const info: LlamaModelInfo = {
    maxPositions: meta.integer("llama.context_length", undefined, 1),
    bosId: meta.integer("tokenizer.ggml.bos_token_id", 1),
    eosId: meta.integer("tokenizer.ggml.eos_token_id", 2),
  };
  const tokenizerFiles = sentencePieceTokenizerFiles(vocabulary(meta, spec.vocab_size, info), reader.name);
  return {
    source: reader.name,
    inputs: [reader.name],
    spec,
    tensors: withRotateHalfQueryKey(spec, tensors),
    files: llamaModelFiles(spec, info, tokenizerFiles),
    close() {
      source.close();
    },
  };
}

/** `blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, and so on; undefined for others. */
function huggingFaceName(ggmlName: string): string | undefined {
  const layer = /^blk\.(0|[1-9]\d*)\.([a-z_]+)\.weight$/.exec(ggmlName);
  if (layer) {
    const suffix = LAYER_TENSORS.get(layer[2]);
    return suffix === undefined ? undefined : `model.layers.${layer[1]}.${suffix}.weight`;
  }
  return GLOBAL_TENSORS.get(ggmlName);
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

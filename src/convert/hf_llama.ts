/**
 * Hugging Face Llama `config.json` <-> {@link DecoderSpec}: reading the config of a Hugging Face source, and
 * writing the config (and generation config) of a converted llama2.c or GGUF model.
 */
import { DecoderSpecError, validateDecoderSpec, type DecoderSpec } from "../architecture/decoder_spec.js";
import { llamaConfig, llamaGenerationConfig, type LlamaModelInfo } from "../architecture/llama_config.js";
export type { LlamaModelInfo };
import type { RopeScaling } from "../positions/rope.js";
import { resolveGeometry, UnsupportedModelError, type ModelConfig } from "../positions/families.js";
import { ConversionError } from "./errors.js";
import type { TokenizerFiles } from "./sentencepiece_tokenizer.js";

/** Model types whose weights are Llama's, name for name. */
const LLAMA_MODEL_TYPES = ["llama", "mistral"];

/** Sizes beyond these are corrupt headers, refused before anything is enumerated or allocated. */
const MAX_LAYERS = 4096;
const MAX_WIDTH = 1 << 20;
const MAX_VOCAB = 1 << 24;

/** The numbers that define a Llama architecture, as a checkpoint header gives them. */
export interface LlamaDimensions {
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_layers: number;
  num_heads: number;
  num_kv_heads: number;
  /** Defaults to hidden_size / num_heads. */
  head_dim?: number;
  norm_eps: number;
  rope_theta: number;
  rope_scaling?: RopeScaling;
  tie_word_embeddings: boolean;
}

/**
 * The spec of a Llama model (RMSNorm, SwiGLU, full rotate_half RoPE), after checking that its numbers are
 * sane: within limits no real model reaches, and dividing as attention needs.
 * @param fail makes the error for a problem (naming the file the numbers came from).
 */
export function llamaDecoderSpec(d: LlamaDimensions, fail: (problem: string) => ConversionError): DecoderSpec {
  const integer = (name: string, value: number, max: number) => {
    if (!Number.isInteger(value) || value < 1 || value > max) {
      throw fail(`${name} is ${value}, expected an integer from 1 to ${max}`);
    }
  };
  integer("vocab_size", d.vocab_size, MAX_VOCAB);
  integer("hidden_size", d.hidden_size, MAX_WIDTH);
  integer("intermediate_size", d.intermediate_size, MAX_WIDTH);
  integer("num_layers", d.num_layers, MAX_LAYERS);
  integer("num_heads", d.num_heads, MAX_WIDTH);
  integer("num_kv_heads", d.num_kv_heads, d.num_heads);
  if (!(Number.isFinite(d.norm_eps) && d.norm_eps > 0)) throw fail(`the norm epsilon is ${d.norm_eps}, expected a finite positive number`);
  const head_dim = d.head_dim ?? d.hidden_size / d.num_heads;
  if (!(head_dim <= MAX_WIDTH)) throw fail(`head_dim ${head_dim} is over ${MAX_WIDTH}`);
  const spec: DecoderSpec = {
    vocab_size: d.vocab_size,
    hidden_size: d.hidden_size,
    num_layers: d.num_layers,
    num_heads: d.num_heads,
    num_kv_heads: d.num_kv_heads,
    head_dim,
    intermediate_size: d.intermediate_size,
    norm: "rms",
    norm_eps: d.norm_eps,
    mlp: "swiglu",
    positions: {
      kind: "rope",
      rope: { layout: "rotate_half", head_dim, rotary_dim: head_dim, theta: d.rope_theta, scaling: d.rope_scaling },
    },
    tie_word_embeddings: d.tie_word_embeddings,
  };
  try {
    validateDecoderSpec(spec);
  } catch (error) {
    if (error instanceof DecoderSpecError) throw fail(error.message.replace("invalid DecoderSpec: ", ""));
    throw error;
  }
  return spec;
}

/** The architecture of a Hugging Face Llama-family `config.json`, refusing anything the graph cannot express. */
export function decoderSpecFromLlamaConfig(config: unknown, file: string): DecoderSpec {
  const fail = (problem: string) => new ConversionError(file, problem);
  if (typeof config !== "object" || config === null || Array.isArray(config)) throw fail("is not a JSON object");
  const fields = config as ModelConfig;
  const modelType = fields.model_type;
  if (modelType === undefined || modelType === null) throw fail(`model_type is missing (supported: ${LLAMA_MODEL_TYPES.join(", ")})`);
  if (typeof modelType !== "string" || !LLAMA_MODEL_TYPES.includes(modelType)) {
    throw fail(`model_type ${JSON.stringify(modelType)} is not supported (supported: ${LLAMA_MODEL_TYPES.join(", ")})`);
  }
  const activation = fields.hidden_act ?? "silu";
  if (activation !== "silu") throw fail(`hidden_act ${JSON.stringify(activation)} is not supported (only silu)`);
  if (fields.attention_bias === true || fields.mlp_bias === true) throw fail("biased projections are not supported");
  if (fields.sliding_window !== undefined && fields.sliding_window !== null) {
    throw fail("sliding-window attention is not supported");
  }
  let geometry;
  try {
    geometry = resolveGeometry(fields);
  } catch (error) {
    if (error instanceof UnsupportedModelError) throw fail(error.message);
    throw error;
  }
  if (geometry.scheme.kind !== "rope" || geometry.scheme.rope.rotary_dim !== geometry.head_dim) {
    throw fail("expected rotary position embeddings over the whole head");
  }
  const { rope } = geometry.scheme;
  const number = (key: string, fallback?: number): number => {
    const value = fields[key] ?? fallback;
    if (value === undefined) throw fail(`${key} is missing`);
    if (typeof value !== "number") throw fail(`${key} is ${JSON.stringify(value)}, expected a number`);
    return value;
  };
  const normEps = number("rms_norm_eps", 1e-6);
  if (!(Number.isFinite(normEps) && normEps > 0)) throw fail(`rms_norm_eps is ${normEps}, expected a finite positive number`);
  return llamaDecoderSpec(
    {
      vocab_size: number("vocab_size"),
      hidden_size: number("hidden_size"),
      intermediate_size: number("intermediate_size"),
      num_layers: geometry.num_layers,
      num_heads: number("num_attention_heads"),
      num_kv_heads: geometry.num_kv_heads,
      head_dim: geometry.head_dim,
      norm_eps: normEps,
      rope_theta: rope.theta,
      rope_scaling: rope.scaling,
      tie_word_embeddings: fields.tie_word_embeddings === true,
    },
    fail,
  );
}

/**
 * The JSON files of an output directory for a model described by `spec` (a standard Hugging Face Llama
 * model, RoPE in the rotate_half layout) and its tokenizer files.
 */
export function llamaModelFiles(spec: DecoderSpec, info: LlamaModelInfo, tokenizerFiles: TokenizerFiles): Map<string, string> {
  return new Map([
    ["config.json", JSON.stringify(llamaConfig(spec, info), null, 2)],
    ["generation_config.json", JSON.stringify(llamaGenerationConfig(info), null, 2)],
    ...Object.entries(tokenizerFiles),
  ]);
}


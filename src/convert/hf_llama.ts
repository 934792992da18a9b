/**
 * The Llama architecture of the headered formats (llama2.c and GGUF): their {@link DecoderSpec}, checked, and
 * the Hugging Face Llama `config.json` (and generation config) of a converted model.
 */
import { DecoderSpecError, validateDecoderSpec, type DecoderSpec } from "../architecture/decoder_spec.js";
import { llamaConfig, llamaGenerationConfig, type LlamaModelInfo } from "../architecture/llama_config.js";
export type { LlamaModelInfo };
import type { RopeScaling } from "../positions/rope.js";
import { ConversionError } from "./errors.js";
import type { TokenizerFiles } from "./sentencepiece_tokenizer.js";

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
 * sane (see {@link checkedDecoderSpec}).
 * @param fail makes the error for a problem (naming the file the numbers came from).
 */
export function llamaDecoderSpec(d: LlamaDimensions, fail: (problem: string) => ConversionError): DecoderSpec {
  const head_dim = d.head_dim ?? d.hidden_size / d.num_heads;
  return checkedDecoderSpec(
    {
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
    },
    fail,
  );
}

/**
 * `spec`, after checking that a checkpoint's numbers are sane: within limits no real model reaches, and
 * dividing as attention needs.
 * @param fail makes the error for a problem (naming the file the numbers came from).
 */
export function checkedDecoderSpec(spec: DecoderSpec, fail: (problem: string) => ConversionError): DecoderSpec {
  const integer = (name: string, value: number, max: number) => {
    if (!Number.isInteger(value) || value < 1 || value > max) {
      throw fail(`${name} is ${value}, expected an integer from 1 to ${max}`);
    }
  };
  integer("vocab_size", spec.vocab_size, MAX_VOCAB);
  integer("hidden_size", spec.hidden_size, MAX_WIDTH);
  integer("intermediate_size", spec.intermediate_size, MAX_WIDTH);
  integer("num_layers", spec.num_layers, MAX_LAYERS);
  integer("num_heads", spec.num_heads, MAX_WIDTH);
  integer("num_kv_heads", spec.num_kv_heads, spec.num_heads);
  if (!(Number.isFinite(spec.norm_eps) && spec.norm_eps > 0)) throw fail(`the norm epsilon is ${spec.norm_eps}, expected a finite positive number`);
  if (!(spec.head_dim <= MAX_WIDTH)) throw fail(`head_dim ${spec.head_dim} is over ${MAX_WIDTH}`);
  try {
    validateDecoderSpec(spec);
  } catch (error) {
    if (error instanceof DecoderSpecError) throw fail(error.message.replace("invalid DecoderSpec: ", ""));
    throw error;
  }
  return spec;
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


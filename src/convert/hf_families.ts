/**
 * The Hugging Face checkpoint families conversion reads, as rows of data: how each `config.json` describes the
 * block (norm, MLP, biases, residual layout), and how its safetensors weights are named and fused. Everything
 * the sink cache depends on (heads, head size, RoPE, sliding window) comes from the family table in
 * src/positions, so conversion and streaming read a config the same way.
 */
import type { DecoderSpec } from "../architecture/decoder_spec.js";
import { resolveGeometry, UnsupportedModelError, type ModelConfig } from "../positions/families.js";
import { ConversionError } from "./errors.js";
import { checkedDecoderSpec } from "./hf_llama.js";

/** A fused checkpoint matrix (or bias vector) that holds several of the spec's weights as blocks of rows. */
export interface FusedWeight {
  /** The checkpoint name, with `{i}` for the layer index. */
  from: string;
  /** The spec weights it holds (names after `model.layers.{i}.`). */
  into: readonly string[];
  /**
   * `concatenated`: the parts one after another (Phi-3's qkv_proj and gate_up_proj). `kv_groups`: per KV head,
   * its query heads, then its key head, then its value head (Falcon's query_key_value, in all three of its
   * architectures: one group for multi-query, one per head for the original, num_kv_heads for the new one).
   */
  layout: "concatenated" | "kv_groups";
}

export interface HfFamily {
  norm: DecoderSpec["norm"];
  /** The key of the norm epsilon, and its default. */
  norm_eps: readonly [key: string, fallback: number];
  mlp: DecoderSpec["mlp"];
  /** The key naming the MLP's activation, its default, and the values that compute this row's MLP. */
  activation: readonly [key: string, fallback: string, accepted: readonly string[]];
  /** The key of the MLP width; without one, `intermediate_multiple` x hidden_size. */
  intermediate_size: string;
  intermediate_multiple?: number;
  /** `tie_word_embeddings` when the config omits it (the family's transformers config class default). */
  tie_default: boolean;
  qkv_bias?: boolean;
  /** A boolean key that, when true, gives every projection a bias (Falcon's `bias`). */
  bias_key?: string;
  /** Whether the family's ALiBi variant converts, and how its graph scales the bias. */
  alibi?: { scaled_by_head_dim: boolean };
  /** Gemma scales the embeddings by sqrt(hidden_size). */
  embedding_scale?: "sqrt_hidden";
  /** Gemma's norms multiply by (1 + weight): the offset is added to every norm weight on conversion. */
  norm_weight_offset?: number;
  block: DecoderSpec["block"] | ((config: ModelConfig) => DecoderSpec["block"]);
  /** Config values that describe something the graph cannot compute: [key, value, why]. */
  refuse: readonly (readonly [key: string, value: unknown, why: string])[];
  /** Checkpoint names that differ from the spec's: [checkpoint pattern, spec pattern], `{i}` the layer. */
  renames: readonly (readonly [string, string])[];
  fused: readonly FusedWeight[];
}

/** Llama's block, whose weights are the spec's, name for name. */
const llama: HfFamily = {
  norm: "rms",
  norm_eps: ["rms_norm_eps", 1e-6],
  mlp: "swiglu",
  activation: ["hidden_act", "silu", ["silu"]],
  intermediate_size: "intermediate_size",
  tie_default: false,
  block: "sequential",
  refuse: [
    ["attention_bias", true, "biased attention projections are not supported"],
    ["mlp_bias", true, "biased MLP projections are not supported"],
  ],
  renames: [],
  fused: [],
};

/**
 * Falcon: `new_decoder_architecture` is parallel with a norm each for attention and MLP (unless
 * `num_ln_in_parallel_attn` is 1); the original is parallel with one norm (`parallel_attn`, default true) or
 * sequential.
 */
function falconBlock(config: ModelConfig): DecoderSpec["block"] {
  if (config.new_decoder_architecture === true) return config.num_ln_in_parallel_attn === 1 ? "parallel_shared_norm" : "parallel";
  return config.parallel_attn === false ? "sequential" : "parallel_shared_norm";
}

export const HF_FAMILIES: Readonly<Record<string, HfFamily>> = {
  llama,
  mistral: llama,
  qwen2: { ...llama, qkv_bias: true },
  gemma: {
    ...llama,
    mlp: "geglu",
    // transformers computes Gemma's MLP with hidden_activation, whatever hidden_act says.
    activation: ["hidden_activation", "gelu_pytorch_tanh", ["gelu_pytorch_tanh"]],
    tie_default: true,
    embedding_scale: "sqrt_hidden",
    norm_weight_offset: 1,
  },
  phi3: {
    ...llama,
    fused: [
      { from: "model.layers.{i}.self_attn.qkv_proj.weight", into: ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"], layout: "concatenated" },
      { from: "model.layers.{i}.mlp.gate_up_proj.weight", into: ["mlp.gate_proj.weight", "mlp.up_proj.weight"], layout: "concatenated" },
    ],
  },
  falcon: {
    norm: "layer",
    norm_eps: ["layer_norm_epsilon", 1e-5],
    mlp: "gelu_exact",
    activation: ["activation", "gelu", ["gelu"]],
    intermediate_size: "ffn_hidden_size",
    intermediate_multiple: 4,
    tie_default: true,
    block: falconBlock,
    bias_key: "bias",
    // falcon-rw adds ALiBi to the scores before they are scaled by 1/sqrt(head_dim).
    alibi: { scaled_by_head_dim: true },
    refuse: [],
    renames: [
      ["transformer.word_embeddings.weight", "model.embed_tokens.weight"],
      ["transformer.h.{i}.input_layernorm.", "model.layers.{i}.input_layernorm."],
      ["transformer.h.{i}.ln_attn.", "model.layers.{i}.input_layernorm."],
      ["transformer.h.{i}.ln_mlp.", "model.layers.{i}.post_attention_layernorm."],
      ["transformer.h.{i}.post_attention_layernorm.", "model.layers.{i}.post_attention_layernorm."],
      ["transformer.h.{i}.self_attention.dense.", "model.layers.{i}.self_attn.o_proj."],
      ["transformer.h.{i}.mlp.dense_h_to_4h.", "model.layers.{i}.mlp.up_proj."],
      ["transformer.h.{i}.mlp.dense_4h_to_h.", "model.layers.{i}.mlp.down_proj."],
      ["transformer.ln_f.", "model.norm."],
    ],
    fused: ["weight", "bias"].map((part) => ({
      from: `transformer.h.{i}.self_attention.query_key_value.${part}`,
      into: ["q", "k", "v"].map((name) => `self_attn.${name}_proj.${part}`),
      layout: "kv_groups" as const,
    })),
  },
};

export const HF_MODEL_TYPES: readonly string[] = Object.keys(HF_FAMILIES);

/** The architecture of a Hugging Face `config.json` and its family's row, refusing what the graph cannot express. */
export function decoderSpecFromHfConfig(config: unknown, file: string): { spec: DecoderSpec; family: HfFamily } {
  const fail = (problem: string) => new ConversionError(file, problem);
  if (typeof config !== "object" || config === null || Array.isArray(config)) throw fail("is not a JSON object");
  const fields = config as ModelConfig;
  const modelType = fields.model_type;
  if (modelType === undefined || modelType === null) throw fail(`model_type is missing (supported: ${HF_MODEL_TYPES.join(", ")})`);
  const family = typeof modelType === "string" && Object.hasOwn(HF_FAMILIES, modelType) ? HF_FAMILIES[modelType] : undefined;
  if (!family) throw fail(`model_type ${JSON.stringify(modelType)} is not supported (supported: ${HF_MODEL_TYPES.join(", ")})`);
  const [activationKey, activationDefault, accepted] = family.activation;
  const activation = fields[activationKey] ?? activationDefault;
  if (!accepted.includes(activation as string)) {
    throw fail(`${activationKey} ${JSON.stringify(activation)} is not supported for ${modelType} (only ${accepted.join(", ")})`);
  }
  for (const [key, value, why] of family.refuse) {
    if (fields[key] === value) throw fail(`${key} is ${JSON.stringify(value)}: ${why}`);
  }
  let geometry;
  try {
    geometry = resolveGeometry(fields);
  } catch (error) {
    if (error instanceof UnsupportedModelError) throw fail(error.message.replace(/^config\.json:? /, ""));
    throw error;
  }
  const { scheme } = geometry;
  let positions: DecoderSpec["positions"];
  if (scheme.kind === "rope" && scheme.rope.layout === "rotate_half") {
    positions = { kind: "rope", rope: scheme.rope };
  } else if (scheme.kind === "alibi" && family.alibi) {
    positions = { kind: "alibi", positions: scheme.positions, ...family.alibi };
  } else {
    throw fail("expected rotary position embeddings in the rotate_half layout");
  }
  const biased = family.bias_key !== undefined && fields[family.bias_key] === true;
  const number = (key: string, fallback?: number): number => {
    const value = fields[key] ?? fallback;
    if (value === undefined) throw fail(`${key} is missing`);
    if (typeof value !== "number") throw fail(`${key} is ${JSON.stringify(value)}, expected a number`);
    return value;
  };
  const positiveNumber = (key: string, fallback?: number): number => {
    const value = number(key, fallback);
    if (!(Number.isFinite(value) && value > 0)) throw fail(`${key} is ${value}, expected a finite positive number`);
    return value;
  };
  const hidden_size = number("hidden_size");
  const tied = fields.tie_word_embeddings ?? family.tie_default;
  if (typeof tied !== "boolean") throw fail(`tie_word_embeddings is ${JSON.stringify(tied)}, expected true or false`);
  const spec = checkedDecoderSpec(
    {
      vocab_size: number("vocab_size"),
      hidden_size,
      num_layers: geometry.num_layers,
      num_heads: number("num_attention_heads"),
      num_kv_heads: geometry.num_kv_heads,
      head_dim: geometry.head_dim,
      intermediate_size: number(family.intermediate_size, family.intermediate_multiple === undefined ? undefined : family.intermediate_multiple * hidden_size),
      norm: family.norm,
      norm_eps: positiveNumber(family.norm_eps[0], family.norm_eps[1]),
      mlp: family.mlp,
      positions,
      tie_word_embeddings: tied,
      ...(family.qkv_bias || biased ? { qkv_bias: true } : {}),
      ...(biased ? { dense_bias: true } : {}),
      ...(family.embedding_scale === "sqrt_hidden" ? { embedding_multiplier: Math.sqrt(hidden_size) } : {}),
      block: typeof family.block === "function" ? family.block(fields) : family.block,
      ...(geometry.sliding_window ? { sliding_window: geometry.sliding_window } : {}),
    },
    fail,
  );
  return { spec, family };
}

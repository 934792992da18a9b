/**
 * A {@link DecoderSpec} of the Llama architecture described as a Hugging Face Llama `config.json`, the
 * config every converted or generated Llama model directory carries.
 */
import type { DecoderSpec } from "./decoder_spec.js";

/** What a Llama model's config needs besides its architecture. */
export interface LlamaModelInfo {
  maxPositions: number;
  bosId: number;
  eosId: number;
}

/** The `config.json` of `spec` as a standard Llama model (full RoPE in the rotate_half layout). */
export function llamaConfig(spec: DecoderSpec, info: LlamaModelInfo): Record<string, unknown> {
  const { positions } = spec;
  if (positions.kind !== "rope" || positions.rope.layout !== "rotate_half" || positions.rope.rotary_dim !== spec.head_dim) {
    throw new Error("llamaConfig: a llama config describes full rotate_half RoPE only");
  }
  const { rope } = positions;
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    vocab_size: spec.vocab_size,
    hidden_size: spec.hidden_size,
    intermediate_size: spec.intermediate_size,
    num_hidden_layers: spec.num_layers,
    num_attention_heads: spec.num_heads,
    num_key_value_heads: spec.num_kv_heads,
    head_dim: spec.head_dim,
    hidden_act: "silu",
    max_position_embeddings: info.maxPositions,
    rms_norm_eps: spec.norm_eps,
    rope_theta: rope.theta,
    rope_scaling: rope.scaling ?? null,
    tie_word_embeddings: spec.tie_word_embeddings,
    attention_bias: false,
    mlp_bias: false,
    bos_token_id: info.bosId,
    eos_token_id: info.eosId,
    torch_dtype: "float32",
    use_cache: true,
  };
}

/** The `generation_config.json` naming the special tokens (generation stops at EOS). */
export function llamaGenerationConfig(info: LlamaModelInfo): Record<string, unknown> {
  return { bos_token_id: info.bosId, eos_token_id: info.eosId };
}

/** The random-weight Llama the speed benchmarks run: hidden 512, 8 heads of 64, SwiGLU 1376, tied head. */
import type { DecoderSpec } from "../src/architecture/decoder_spec.js";

export function benchmarkDecoderSpec(vocab_size: number, num_layers: number): DecoderSpec {
  return {
    vocab_size,
    hidden_size: 512,
    num_layers,
    num_heads: 8,
    num_kv_heads: 8,
    head_dim: 64,
    intermediate_size: 1376,
    norm: "rms",
    norm_eps: 1e-5,
    mlp: "swiglu",
    positions: { kind: "rope", rope: { layout: "rotate_half", head_dim: 64, rotary_dim: 64, theta: 10000 } },
    tie_word_embeddings: true,
  };
}

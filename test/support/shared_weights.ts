/**
 * The shared models' weights read straight from their files by the formats' published layouts, for the oracle:
 * nothing here goes through src/convert (its readers, its name mapping or its Q/K permutation), so a converter
 * bug cannot cancel out against a reference built from the converter's own output.
 *
 * - llama2.c legacy checkpoint (stories260K.bin): 7 x int32 header, then fp32 tensors in run.c's order. Q and K
 *   stay in Meta's layout, so the spec rotates interleaved pairs (x[2i], x[2i+1]), as run.c does.
 * - safetensors (TinyStories-656K): an 8-byte little-endian header length, a JSON header of dtype / shape /
 *   data_offsets, then the data. Hugging Face Llama weights rotate halves (rotate_half).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { DecoderSpec, WeightTensor } from "../../src/architecture/decoder_spec.js";

export interface SharedWeights {
  spec: DecoderSpec;
  weights: Map<string, WeightTensor>;
}

/** Reads a llama2.c legacy (v0) checkpoint as run.c does. */
export function readLlama2cWeights(path: string): SharedWeights {
  const file = readFileSync(path);
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const [dim, hidden, layers, heads, kvHeads, signedVocab, seqLen] = Array.from({ length: 7 }, (_, i) => view.getInt32(4 * i, true));
  const shared = signedVocab > 0;
  const vocab = Math.abs(signedVocab);
  const headSize = dim / heads;
  const kvDim = kvHeads * headSize;
  let offset = 7 * 4;
  const take = (count: number): Float32Array => {
    const out = new Float32Array(count);
    for (let i = 0; i < count; i++) out[i] = view.getFloat32(offset + 4 * i, true);
    offset += 4 * count;
    return out;
  };
  const weights = new Map<string, WeightTensor>();
  /** A [layers, ...shape] block, split into one tensor per layer named by `name(layer)`. */
  const perLayer = (name: (layer: number) => string, shape: number[]) => {
    const size = shape.reduce((a, b) => a * b, 1);
    const all = take(layers * size);
    for (let l = 0; l < layers; l++) weights.set(name(l), { shape, data: all.slice(l * size, (l + 1) * size) });
  };
  const layer = (l: number, rest: string) => `model.layers.${l}.${rest}`;
  weights.set("model.embed_tokens.weight", { shape: [vocab, dim], data: take(vocab * dim) });
  perLayer((l) => layer(l, "input_layernorm.weight"), [dim]);
  perLayer((l) => layer(l, "self_attn.q_proj.weight"), [dim, dim]);
  perLayer((l) => layer(l, "self_attn.k_proj.weight"), [kvDim, dim]);
  perLayer((l) => layer(l, "self_attn.v_proj.weight"), [kvDim, dim]);
  perLayer((l) => layer(l, "self_attn.o_proj.weight"), [dim, dim]);
  perLayer((l) => layer(l, "post_attention_layernorm.weight"), [dim]);
  // run.c: hb = silu(w1 x) * (w3 x); out = w2 hb.
  perLayer((l) => layer(l, "mlp.gate_proj.weight"), [hidden, dim]);
  perLayer((l) => layer(l, "mlp.down_proj.weight"), [dim, hidden]);
  perLayer((l) => layer(l, "mlp.up_proj.weight"), [hidden, dim]);
  weights.set("model.norm.weight", { shape: [dim], data: take(dim) });
  take(seqLen * (headSize / 2)); // freq_cis_real (run.c recomputes the rotation)
  take(seqLen * (headSize / 2)); // freq_cis_imag
  if (!shared) weights.set("lm_head.weight", { shape: [vocab, dim], data: take(vocab * dim) });
  if (offset !== file.byteLength) throw new Error(`${path}: read ${offset} of ${file.byteLength} bytes`);
  const spec: DecoderSpec = {
    vocab_size: vocab,
    hidden_size: dim,
    num_layers: layers,
    num_heads: heads,
    num_kv_heads: kvHeads,
    head_dim: headSize,
    intermediate_size: hidden,
    norm: "rms",
    norm_eps: 1e-5,
    mlp: "swiglu",
    positions: { kind: "rope", rope: { layout: "interleaved", head_dim: headSize, rotary_dim: headSize, theta: 10000 } },
    tie_word_embeddings: shared,
  };
  return { spec, weights };
}

/** Reads a Hugging Face Llama directory of one F32 `model.safetensors` (TinyStories-656K's layout). */
export function readSafetensorsLlamaWeights(dir: string): SharedWeights {
  const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, number | boolean | null>;
  const file = readFileSync(join(dir, "model.safetensors"));
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  const header = JSON.parse(file.subarray(8, 8 + headerLength).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const weights = new Map<string, WeightTensor>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    if (entry.dtype !== "F32") throw new Error(`${name}: ${entry.dtype}, expected F32`);
    const [begin, end] = entry.data_offsets;
    const data = new Float32Array((end - begin) / 4);
    for (let i = 0; i < data.length; i++) data[i] = view.getFloat32(8 + headerLength + begin + 4 * i, true);
    weights.set(name, { shape: entry.shape, data });
  }
  const tied = config.tie_word_embeddings === true;
  // A tied checkpoint may store the shared matrix under either name.
  if (tied && !weights.has("model.embed_tokens.weight")) weights.set("model.embed_tokens.weight", weights.get("lm_head.weight")!);
  if (tied) weights.delete("lm_head.weight");
  const hidden = config.hidden_size as number;
  const heads = config.num_attention_heads as number;
  const headDim = (config.head_dim as number | undefined) ?? hidden / heads;
  const spec: DecoderSpec = {
    vocab_size: config.vocab_size as number,
    hidden_size: hidden,
    num_layers: config.num_hidden_layers as number,
    num_heads: heads,
    num_kv_heads: (config.num_key_value_heads as number | undefined) ?? heads,
    head_dim: headDim,
    intermediate_size: config.intermediate_size as number,
    norm: "rms",
    norm_eps: config.rms_norm_eps as number,
    mlp: "swiglu",
    positions: { kind: "rope", rope: { layout: "rotate_half", head_dim: headDim, rotary_dim: headDim, theta: config.rope_theta as number } },
    tie_word_embeddings: tied,
  };
  return { spec, weights };
}

/** Mean negative log-likelihood (nats) of each next token, from per-position logits. */
export function meanNextTokenNll(rows: readonly ArrayLike<number>[], ids: readonly number[]): number {
  let total = 0;
  for (let t = 0; t + 1 < ids.length; t++) {
    const row = rows[t];
    let max = -Infinity;
    for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]);
    let sum = 0;
    for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
    total += Math.log(sum) + max - row[ids[t + 1]];
  }
  return total / (ids.length - 1);
}

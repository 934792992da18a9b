/**
 * Cross-checks two independent implementations of the same architecture: the reference forward (float64 loops)
 * and the ONNX graph `buildDecoderOnnx` emits, run by onnxruntime-node with the KV cache fed back by hand. With
 * a full cache (window null) both must give the same logits for every chunk, which pins the conventions the
 * reference's self-consistency tests cannot see (rotation layout and direction, GQA head mapping, ALiBi slopes,
 * norms, MLPs).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import * as ort from "onnxruntime-node";

import type { DecoderSpec } from "../src/architecture/decoder_spec.js";
import { TINY_VARIANTS, tinyDecoderSpec } from "./support/fixtures/tiny_models.js";
import { randomDecoderWeights } from "./support/fixtures/random_weights.js";
import { buildDecoderOnnx, type OnnxExportOptions } from "../src/onnx/decoder_export.js";
import { quantizedWeights } from "./support/reference/quantized_weights.js";
import { StreamingReference } from "./support/reference/streaming_reference.js";

const TOLERANCE = 1e-4;
/** Chunk sizes: a prompt, then single tokens and small chunks, as generation feeds them. */
const CHUNKS = [5, 1, 3, 1, 1, 4];

/** Runs the ONNX graph over `tokens` chunk by chunk, keeping the presents as the next pasts. */
async function onnxLogits(spec: DecoderSpec, session: ort.InferenceSession, tokens: readonly number[]): Promise<Float32Array[]> {
  const int64 = (values: number[]) => new ort.Tensor("int64", BigInt64Array.from(values, BigInt), [1, values.length]);
  const past = new Map<string, ort.Tensor>();
  for (let i = 0; i < spec.num_layers; i++) {
    for (const kind of ["key", "value"]) {
      past.set(`past_key_values.${i}.${kind}`, new ort.Tensor("float32", new Float32Array(0), [1, spec.num_kv_heads, 0, spec.head_dim]));
    }
  }
  const logits: Float32Array[] = [];
  let fed = 0;
  for (let c = 0; fed < tokens.length; c++) {
    const chunk = tokens.slice(fed, fed + CHUNKS[c % CHUNKS.length]);
    const feeds: Record<string, ort.Tensor> = {
      input_ids: int64(chunk),
      attention_mask: int64(new Array<number>(fed + chunk.length).fill(1)),
      ...Object.fromEntries(past),
    };
    if (session.inputNames.includes("position_ids")) feeds.position_ids = int64(chunk.map((_, k) => fed + k));
    const outputs = await session.run(feeds);
    const data = outputs.logits.data as Float32Array;
    for (let k = 0; k < chunk.length; k++) logits.push(data.slice(k * spec.vocab_size, (k + 1) * spec.vocab_size));
    for (const name of past.keys()) past.set(name, outputs[name.replace("past_key_values", "present")]);
    fed += chunk.length;
  }
  return logits;
}

function referenceLogits(spec: DecoderSpec, reference: StreamingReference, tokens: readonly number[]): Float32Array[] {
  const logits: Float32Array[] = [];
  let fed = 0;
  for (let c = 0; fed < tokens.length; c++) {
    const chunk = tokens.slice(fed, fed + CHUNKS[c % CHUNKS.length]);
    logits.push(...reference.forward(chunk));
    fed += chunk.length;
  }
  assert.equal(logits[0].length, spec.vocab_size);
  return logits;
}

const llama = tinyDecoderSpec("llama");
const fullRope = (head_dim: number) =>
  ({ kind: "rope", rope: { layout: "rotate_half", head_dim, rotary_dim: head_dim, theta: 10000 } }) as const;

/**
 * Beyond the fixtures: a non-power-of-two ALiBi head count, head_dim independent of hidden size, yarn scaling,
 * and the blocks of the converted families (15 tokens pass the sliding windows of 4 and 6 slots).
 */
const extraSpecs: Record<string, DecoderSpec> = {
  "qwen2: qkv biases, sliding window 4 on every layer": { ...llama, qkv_bias: true, sliding_window: { size: 4, layers: [0, 1] } },
  "gemma: geglu, embedding multiplier, one KV head of 12": {
    ...llama, mlp: "geglu", embedding_multiplier: Math.sqrt(32), num_kv_heads: 1, head_dim: 12, positions: fullRope(12), tie_word_embeddings: true,
  },
  "gemma2: sliding window 6 on layer 0 only": { ...llama, mlp: "geglu", sliding_window: { size: 6, layers: [0] } },
  "falcon-7b: parallel block sharing one layer norm, exact gelu, one KV head": {
    ...llama, norm: "layer", mlp: "gelu_exact", block: "parallel_shared_norm", num_kv_heads: 1, tie_word_embeddings: true,
  },
  "falcon-40b: parallel block with two layer norms, grouped KV heads": { ...llama, norm: "layer", mlp: "gelu_exact", block: "parallel" },
  "falcon-rw: ALiBi scaled by 1/sqrt(head_dim), biases on every projection": {
    ...llama, norm: "layer", mlp: "gelu_exact", num_kv_heads: 4, qkv_bias: true, dense_bias: true,
    positions: { kind: "alibi", positions: "mask_cumsum", scaled_by_head_dim: true },
  },
  "alibi, 6 heads": { ...tinyDecoderSpec("bloom"), num_heads: 6, num_kv_heads: 6, head_dim: 5 },
  "llama, yarn": {
    ...tinyDecoderSpec("llama"),
    positions: {
      kind: "rope",
      rope: {
        layout: "rotate_half",
        head_dim: 8,
        rotary_dim: 8,
        theta: 10000,
        scaling: { rope_type: "yarn", factor: 4, original_max_position_embeddings: 8 },
      },
    },
  },
};

const qwen2Windowed: DecoderSpec = { ...llama, num_kv_heads: 4, qkv_bias: true, sliding_window: { size: 4, layers: [0, 1] } };

/** Sliding windows and biases in the other export styles, the windows passed as above. */
const styledSpecs: [string, DecoderSpec, OnnxExportOptions][] = [
  ["qwen2 as MultiHeadAttention: the sliding mask bias on every layer, fused norms", qwen2Windowed, { attention: "MultiHeadAttention", fused_norms: true }],
  ["gemma2 as MultiHeadAttention: a sliding layer beside a full one", { ...llama, num_kv_heads: 4, mlp: "geglu", sliding_window: { size: 6, layers: [0] } }, { attention: "MultiHeadAttention" }],
  ["qwen2 q4: sliding window 4, q/k/v biases after MatMulNBits, fused norms", qwen2Windowed, { dtype: "q4", fused_norms: true }],
];

const cases: [string, DecoderSpec, OnnxExportOptions][] = [
  ...TINY_VARIANTS.map((variant): [string, DecoderSpec, OnnxExportOptions] => [variant, tinyDecoderSpec(variant), {}]),
  ...Object.entries(extraSpecs).map(([name, spec]): [string, DecoderSpec, OnnxExportOptions] => [name, spec, {}]),
  ...styledSpecs,
];

describe("reference forward vs the ONNX graph (full cache)", () => {
  for (const [name, spec, options] of cases) {
    it(`${name}: logits agree within ${TOLERANCE} over chunked decoding`, async () => {
      const weights = randomDecoderWeights(spec, 3);
      const session = await ort.InferenceSession.create(buildDecoderOnnx(spec, weights, options));
      const tokens = Array.from({ length: 15 }, (_, i) => (i * 37 + 11) % spec.vocab_size);
      // A quantized graph computes with its rounded weights: so does the reference.
      const computed = options.dtype === "q4" ? quantizedWeights(weights, "q4") : weights;
      const expected = referenceLogits(spec, new StreamingReference(spec, computed, { sink_size: 0, window_size: null }), tokens);
      const actual = await onnxLogits(spec, session, tokens);
      assert.equal(expected.length, tokens.length, "one row of reference logits per token");
      assert.equal(actual.length, expected.length);
      let maxDiff = 0;
      for (let t = 0; t < expected.length; t++) {
        for (let i = 0; i < spec.vocab_size; i++) maxDiff = Math.max(maxDiff, Math.abs(actual[t][i] - expected[t][i]));
      }
      assert.ok(maxDiff < TOLERANCE, `max |onnx - reference| = ${maxDiff}`);
      await session.release();
    });
  }
});

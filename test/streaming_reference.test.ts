/**
 * Tests of the reference forward on its own: tiny hand-made specs with seeded random weights. The library is
 * checked against this oracle, so these tests pin the oracle's StreamingLLM semantics (eviction, cache-relative
 * positions, re-rotation) and its consistency across ways of feeding the same tokens.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { weightShapes, type DecoderSpec, type DecoderWeights, type WeightTensor } from "../src/architecture/decoder_spec.js";
import { ropeInverseFrequencies } from "../src/positions/rope.js";
import {
  referenceAlibiSlopes,
  referenceNll,
  StreamingReference,
  type ReferencePolicy,
} from "./support/reference/streaming_reference.js";
import { seededRandom } from "./support/random.js";

/** Random weights of a sensible scale: norm weights near 1, small biases, linear layers ~ 1/sqrt(fan_in). */
function randomWeights(spec: DecoderSpec, seed: number): DecoderWeights {
  const random = seededRandom(seed);
  const uniform = () => 2 * random() - 1;
  const weights = new Map<string, WeightTensor>();
  for (const [name, shape] of weightShapes(spec)) {
    const size = shape.reduce((a, b) => a * b, 1);
    const isNormWeight = /(layernorm|model\.norm)\.weight$/.test(name);
    const isEmbedding = name.startsWith("model.embed_");
    // Larger query/key weights make attention peaked, so positions visibly change the logits.
    const linearScale = (/[qk]_proj/.test(name) ? 4 : 2) / Math.sqrt(shape[shape.length - 1]);
    const data = new Float32Array(size);
    for (let i = 0; i < size; i++) {
      if (isNormWeight) data[i] = 1 + 0.2 * uniform();
      else if (name.endsWith(".bias")) data[i] = 0.1 * uniform();
      else if (isEmbedding) data[i] = uniform();
      else data[i] = linearScale * uniform();
    }
    weights.set(name, { shape, data });
  }
  return weights;
}

const llamaLike: Omit<DecoderSpec, "positions"> = {
  vocab_size: 19,
  hidden_size: 12,
  num_layers: 2,
  num_heads: 4,
  num_kv_heads: 2,
  head_dim: 4,
  intermediate_size: 20,
  norm: "rms",
  norm_eps: 1e-5,
  mlp: "swiglu",
  tie_word_embeddings: false,
};

const gpt2Like: Omit<DecoderSpec, "positions"> = {
  ...llamaLike,
  num_heads: 6,
  num_kv_heads: 6,
  head_dim: 3,
  norm: "layer",
  mlp: "gelu",
  tie_word_embeddings: true,
};

/** One spec per position scheme; rope variants use grouped-query attention. */
const variants: Record<string, DecoderSpec> = {
  "rope rotate_half": {
    ...llamaLike,
    positions: { kind: "rope", rope: { layout: "rotate_half", head_dim: 4, rotary_dim: 4, theta: 10 } },
  },
  "rope interleaved, partial rotary, yarn": {
    ...llamaLike,
    head_dim: 6,
    tie_word_embeddings: true,
    positions: {
      kind: "rope",
      rope: {
        layout: "interleaved",
        head_dim: 6,
        rotary_dim: 4,
        theta: 10,
        // yarn's attention factor != 1 exercises the cos/sin magnitude.
        scaling: { rope_type: "yarn", factor: 2, original_max_position_embeddings: 8 },
      },
    },
  },
  // 6 heads: the non-power-of-two ALiBi slope case.
  alibi: { ...gpt2Like, positions: { kind: "alibi", positions: "mask_cumsum" } },
  learned: { ...gpt2Like, positions: { kind: "learned", max_positions: 40 } },
};

const fullCache: ReferencePolicy = { sink_size: 0, window_size: null };

function randomTokens(count: number, vocab: number, seed: number): number[] {
  const random = seededRandom(seed);
  return Array.from({ length: count }, () => Math.floor(random() * vocab));
}

/** Feeds `tokens` in chunks of the given sizes (cycled) and returns the logits of every token. */
function feedInChunks(model: StreamingReference, tokens: readonly number[], sizes: readonly number[]): Float32Array[] {
  const logits: Float32Array[] = [];
  for (let start = 0, c = 0; start < tokens.length; c++) {
    const chunk = tokens.slice(start, start + sizes[c % sizes.length]);
    logits.push(...model.forward(chunk));
    start += chunk.length;
  }
  return logits;
}

function maxAbsDiff(a: readonly Float32Array[], b: readonly Float32Array[]): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let t = 0; t < a.length; t++) {
    assert.equal(a[t].length, b[t].length);
    for (let i = 0; i < a[t].length; i++) max = Math.max(max, Math.abs(a[t][i] - b[t][i]));
  }
  return max;
}

/** What StreamingLLM keeps after `fed` tokens: the first sink_size, then the most recent up to capacity. */
function expectedKept(fed: number, policy: ReferencePolicy): number[] {
  const all = Array.from({ length: fed }, (_, i) => i);
  if (policy.window_size === null) return all;
  const kept = Math.min(fed, policy.sink_size + policy.window_size);
  const sinks = Math.min(fed, policy.sink_size);
  return all.slice(0, sinks).concat(all.slice(fed - (kept - sinks)));
}

/** One layer, so a token's key and value depend only on the token itself (and its position, for learned). */
function oneLayer(spec: DecoderSpec): DecoderSpec {
  return { ...spec, num_layers: 1 };
}

describe("referenceAlibiSlopes", () => {
  it("gives the geometric sequence 2^(-8/n * k) for a power-of-two head count", () => {
    assert.deepEqual(referenceAlibiSlopes(8), [1, 2, 3, 4, 5, 6, 7, 8].map((k) => 2 ** -k));
    assert.deepEqual(referenceAlibiSlopes(1), [2 ** -8]);
  });

  it("interleaves the 2n sequence for the remaining heads (Bloom's non-power-of-two case)", () => {
    assert.deepEqual(referenceAlibiSlopes(6), [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]);
    const twelve = referenceAlibiSlopes(12);
    assert.deepEqual(twelve.slice(8), [1, 3, 5, 7].map((k) => 2 ** (-0.5 * k)));
  });
});

describe("referenceNll", () => {
  it("is log(vocab) for uniform logits and -log softmax otherwise", () => {
    assert.ok(Math.abs(referenceNll(new Float32Array(7).fill(3), 2) - Math.log(7)) < 1e-12);
    const logits = Float32Array.from([0.5, -1, 2]);
    const expected = -Math.log(Math.exp(-1) / (Math.exp(0.5) + Math.exp(-1) + Math.exp(2)));
    assert.ok(Math.abs(referenceNll(logits, 1) - expected) < 1e-6);
  });

  it("stays finite for extreme logits and rejects a target outside the vocabulary", () => {
    const logits = Float32Array.from([1000, 0, -1000]);
    assert.ok(Math.abs(referenceNll(logits, 0)) < 1e-12);
    assert.ok(Math.abs(referenceNll(logits, 2) - 2000) < 1e-9);
    assert.throws(() => referenceNll(logits, 3), /outside/);
  });
});

describe("StreamingReference against a hand computation", () => {
  // The self-consistency tests below cannot see a convention error shared by every path (rotation direction,
  // rope magnitude, ALiBi scale), so pin them on a model small enough to work out by hand: hidden size 2, one
  // head of size 2, identity projections, a zero MLP, tied identity embeddings, and the two tokens
  // e0 = (1, 0) then e1 = (0, 1). RMSNorm scales both to length sqrt(2), so with q = k = s * norm(x):
  //   scores (already / sqrt(head_dim)): alibi  [0 - slope, sqrt(2) s^2]
  //                                      rope   [-sqrt(2) (m s)^2 sin(f), sqrt(2) (m s)^2]
  // (the query at position 1 is rotated to (-sin f, cos f), the key of e0 stays at position 0; m is the rope
  // magnitude), attention output = sqrt(2) (w0, w1), h = (0, 1) + output, logits = rmsnorm(h).
  const s = 1.3;
  const identity = { shape: [2, 2], data: Float32Array.from([1, 0, 0, 1]) };
  const scaled = { shape: [2, 2], data: Float32Array.from([s, 0, 0, s]) };
  function handModel(positions: DecoderSpec["positions"]): StreamingReference {
    const spec: DecoderSpec = {
      vocab_size: 2, hidden_size: 2, num_layers: 1, num_heads: 1, num_kv_heads: 1, head_dim: 2,
      intermediate_size: 1, norm: "rms", norm_eps: 0, mlp: "swiglu", tie_word_embeddings: true, positions,
    };
    const tensors: Record<string, WeightTensor> = {
      "model.embed_tokens.weight": identity,
      "model.layers.0.self_attn.q_proj.weight": scaled,
      "model.layers.0.self_attn.k_proj.weight": scaled,
      "model.layers.0.self_attn.v_proj.weight": identity,
      "model.layers.0.self_attn.o_proj.weight": identity,
      "model.layers.0.mlp.gate_proj.weight": { shape: [1, 2], data: new Float32Array(2) },
      "model.layers.0.mlp.up_proj.weight": { shape: [1, 2], data: new Float32Array(2) },
      "model.layers.0.mlp.down_proj.weight": { shape: [2, 1], data: new Float32Array(2) },
    };
    for (const norm of ["model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm", "model.norm"]) {
      tensors[`${norm}.weight`] = { shape: [2], data: Float32Array.from([1, 1]) };
    }
    return new StreamingReference(spec, new Map(Object.entries(tensors)), fullCache);
  }
  function expectedLogits(score0: number, score1: number): number[] {
    const w0 = 1 / (1 + Math.exp(score1 - score0));
    const h = [Math.SQRT2 * w0, 1 + Math.SQRT2 * (1 - w0)];
    const rms = Math.sqrt((h[0] ** 2 + h[1] ** 2) / 2);
    return h.map((v) => v / rms);
  }
  function assertClose(actual: Float32Array, expected: number[]): void {
    assert.ok(Math.abs(actual[0] - expected[0]) < 1e-6 && Math.abs(actual[1] - expected[1]) < 1e-6, `${actual} vs ${expected}`);
  }

  it("rope: rotates x' = x cos - y sin, y' = y cos + x sin, scaled by the attention factor", () => {
    for (const rope of [
      { layout: "rotate_half" as const, head_dim: 2, rotary_dim: 2, theta: 10000 },
      {
        layout: "interleaved" as const, head_dim: 2, rotary_dim: 2, theta: 10000,
        scaling: { rope_type: "yarn" as const, factor: 4, original_max_position_embeddings: 16, attention_factor: 1.5 },
      },
    ]) {
      const frequency = ropeInverseFrequencies(rope)[0];
      const m = rope.scaling?.attention_factor ?? 1;
      const scale = Math.SQRT2 * (m * s) ** 2;
      const [, last] = handModel({ kind: "rope", rope }).forward([0, 1]);
      assertClose(last, expectedLogits(-scale * Math.sin(frequency), scale));
    }
  });

  it("alibi: subtracts slope * distance from the scaled dot product", () => {
    const [, last] = handModel({ kind: "alibi", positions: "key_index" }).forward([0, 1]);
    assertClose(last, expectedLogits(-referenceAlibiSlopes(1)[0], Math.SQRT2 * s * s));
  });
});

describe("StreamingReference with a full cache (window null)", () => {
  for (const [name, spec] of Object.entries(variants)) {
    const weights = randomWeights(spec, 7);
    const tokens = randomTokens(12, spec.vocab_size, 11);

    it(`${name}: token by token, in chunks and in one forward give the same logits`, () => {
      const whole = new StreamingReference(spec, weights, fullCache).forward(tokens);
      const single = feedInChunks(new StreamingReference(spec, weights, fullCache), tokens, [1]);
      const chunked = feedInChunks(new StreamingReference(spec, weights, fullCache), tokens, [3, 1, 5]);
      assert.equal(whole.length, tokens.length, "one row of logits per token");
      assert.ok(maxAbsDiff(whole, single) < 1e-9);
      assert.ok(maxAbsDiff(whole, chunked) < 1e-9);
      assert.ok(whole.every((row) => row.length === spec.vocab_size && row.every(Number.isFinite)));
    });

    it(`${name}: positions matter (swapping two earlier tokens changes the last logits)`, () => {
      // Without positions attention is permutation invariant over the keys, so this fails if positions are ignored.
      const [a, b, c] = [1, 2, 3];
      const last = (sequence: number[]) => new StreamingReference(spec, weights, fullCache).forward(sequence).slice(-1);
      assert.ok(maxAbsDiff(last([a, b, c]), last([b, a, c])) > 1e-4);
    });
  }

  it("keeps every token and numbers them 0, 1, 2, ... past any window", () => {
    const spec = variants["rope rotate_half"];
    const model = new StreamingReference(spec, randomWeights(spec, 1), fullCache);
    feedInChunks(model, randomTokens(30, spec.vocab_size, 2), [7]);
    assert.equal(model.length, 30);
    assert.deepEqual(model.streamIndices, expectedKept(30, fullCache));
  });
});

describe("StreamingReference with attention sinks", () => {
  it("never holds more than sink_size + window_size entries: the first sinks plus the most recent", () => {
    const spec = variants["rope rotate_half"];
    const tokens = randomTokens(40, spec.vocab_size, 3);
    for (const policy of [
      { sink_size: 3, window_size: 4 },
      { sink_size: 4, window_size: 1 },
      { sink_size: 0, window_size: 5 },
    ]) {
      const model = new StreamingReference(spec, randomWeights(spec, 4), policy);
      const capacity = policy.sink_size + policy.window_size;
      let fed = 0;
      for (const size of [2, 1, 4, 1, 3, 1, 1, 4, 2, 1, 1, 3, 1]) {
        // The largest chunk that fits once the sinks are in.
        const chunk = tokens.slice(fed, fed + Math.min(size, capacity - Math.min(policy.sink_size, model.length)));
        model.forward(chunk);
        fed += chunk.length;
        assert.ok(model.length <= capacity);
        assert.deepEqual(model.streamIndices, expectedKept(fed, policy), `after ${fed} tokens with ${JSON.stringify(policy)}`);
      }
      assert.ok(fed > capacity, "the stream must outgrow the cache");
    }
  });

  // With one layer, keys and values depend on the token alone, so the stream's next-token logits must equal a
  // fresh full-cache run over just the kept tokens: this holds only if every cached key is re-positioned at
  // its cache index (rope) and distances are measured in cache positions (alibi).
  for (const name of ["rope rotate_half", "rope interleaved, partial rotary, yarn", "alibi"]) {
    it(`${name}, one layer: equals a fresh full-cache run over the kept tokens`, () => {
      const spec = oneLayer(variants[name]);
      const weights = randomWeights(spec, 5);
      const tokens = randomTokens(36, spec.vocab_size, 6);
      for (const policy of [
        { sink_size: 2, window_size: 5 },
        { sink_size: 4, window_size: 3 },
      ]) {
        const stream = new StreamingReference(spec, weights, policy);
        let fed = 0;
        let compared = 0;
        for (const size of [3, 1, 2, 1, 1, 3, 1, 2, 2, 1, 1, 1, 2, 1, 3, 1, 1, 1, 2, 3]) {
          const chunk = tokens.slice(fed, fed + size);
          const streamed = stream.forward(chunk);
          fed += chunk.length;
          const kept = expectedKept(fed, policy).map((i) => tokens[i]);
          const fresh = new StreamingReference(spec, weights, fullCache).forward(kept).slice(-chunk.length);
          assert.equal(streamed.length, chunk.length, "one row of logits per fed token");
          assert.ok(maxAbsDiff(streamed, fresh) < 1e-9, `after ${fed} tokens with ${JSON.stringify(policy)}`);
          compared += streamed.length;
        }
        assert.equal(compared, fed, "every fed token's logits were compared");
        assert.ok(fed > policy.sink_size + policy.window_size + 10, "the cache must roll over");
      }
    });
  }

  it("keeps cached keys and values as computed: with two layers recomputing the kept tokens differs", () => {
    // Second-layer keys saw the evicted tokens; a cache that recomputed them would match the fresh run.
    const spec = variants["rope rotate_half"];
    const weights = randomWeights(spec, 5);
    const tokens = randomTokens(20, spec.vocab_size, 6);
    const policy = { sink_size: 2, window_size: 4 };
    const stream = new StreamingReference(spec, weights, policy);
    const streamed = feedInChunks(stream, tokens, [1]).slice(-1);
    const kept = stream.streamIndices.map((i) => tokens[i]);
    const fresh = new StreamingReference(spec, weights, fullCache).forward(kept).slice(-1);
    assert.ok(maxAbsDiff(streamed, fresh) > 1e-4);
  });

  it("sink_size 0 is a plain sliding window over the most recent window_size tokens", () => {
    const spec = oneLayer(variants["rope rotate_half"]);
    const weights = randomWeights(spec, 8);
    const tokens = randomTokens(16, spec.vocab_size, 9);
    const window = 4;
    const stream = new StreamingReference(spec, weights, { sink_size: 0, window_size: window });
    tokens.forEach((token, t) => {
      const streamed = stream.forward([token]);
      assert.equal(streamed.length, 1, `at token ${t}`);
      const recent = tokens.slice(Math.max(0, t + 1 - window), t + 1);
      assert.deepEqual(stream.streamIndices, recent.map((_, i) => t + 1 - recent.length + i));
      const fresh = new StreamingReference(spec, weights, fullCache).forward(recent).slice(-1);
      assert.ok(maxAbsDiff(streamed, fresh) < 1e-9, `at token ${t}`);
    });
  });

  it("learned positions are cache-relative at feed time, so a stream outlives the position table", () => {
    const spec = { ...variants.learned, positions: { kind: "learned" as const, max_positions: 6 } };
    const weights = randomWeights(spec, 10);
    const tokens = randomTokens(30, spec.vocab_size, 12);
    const stream = new StreamingReference(spec, weights, { sink_size: 2, window_size: 4 });
    const logits = feedInChunks(stream, tokens, [1, 2]);
    assert.equal(logits.length, tokens.length, "one row of logits per token");
    assert.ok(logits.every((row) => row.length === spec.vocab_size && row.every(Number.isFinite)));
    const full = new StreamingReference(spec, weights, fullCache);
    full.forward(tokens.slice(0, 6));
    assert.throws(() => full.forward([tokens[6]]), /position 6 is past the learned position table/);
    assert.equal(full.length, 6);

    // A cache larger than the table fails before evicting anything.
    const tooLarge = new StreamingReference(spec, weights, { sink_size: 0, window_size: 8 });
    tooLarge.forward(tokens.slice(0, 5));
    assert.throws(() => tooLarge.forward(tokens.slice(5, 9)), /position 7 is past the learned position table/);
    assert.deepEqual(tooLarge.streamIndices, [0, 1, 2, 3, 4]);
  });

  it("throws on a chunk that cannot fit beside the sinks, leaving the cache untouched", () => {
    const spec = variants.alibi;
    const weights = randomWeights(spec, 13);
    const tokens = randomTokens(20, spec.vocab_size, 14);

    const model = new StreamingReference(spec, weights, { sink_size: 2, window_size: 3 });
    assert.throws(() => model.forward(tokens.slice(0, 6)), /at most 5 fit, feed the tokens in smaller chunks/);
    assert.equal(model.length, 0);
    model.forward(tokens.slice(0, 5));
    const before = model.streamIndices;
    assert.throws(() => model.forward(tokens.slice(5, 9)), /at most 3 fit/);
    assert.deepEqual(model.streamIndices, before);
    model.forward(tokens.slice(5, 8));
    assert.deepEqual(model.streamIndices, [0, 1, 5, 6, 7]);

    // Before all sinks have arrived, only the sinks already cached reduce the room.
    const early = new StreamingReference(spec, weights, { sink_size: 4, window_size: 2 });
    early.forward(tokens.slice(0, 2));
    assert.throws(() => early.forward(tokens.slice(2, 7)), /at most 4 fit/);
    early.forward(tokens.slice(2, 6));
    assert.equal(early.length, 6);
  });

  it("rejects invalid policies, tokens and weights with clear errors", () => {
    const spec = variants["rope rotate_half"];
    const weights = randomWeights(spec, 15);
    assert.throws(() => new StreamingReference(spec, weights, { sink_size: -1, window_size: 4 }), /sink_size/);
    assert.throws(() => new StreamingReference(spec, weights, { sink_size: 4, window_size: 0 }), /window_size/);
    assert.throws(() => new StreamingReference(spec, weights, fullCache).forward([spec.vocab_size]), /outside the vocabulary/);
    const missing = new Map(weights);
    missing.delete("model.layers.1.mlp.up_proj.weight");
    assert.throws(() => new StreamingReference(spec, missing, fullCache), /missing weight model\.layers\.1\.mlp\.up_proj\.weight/);
  });
});

/** Family rows, config parsing, RoPE scaling and the key rotation the cache relies on. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { resolveGeometry, SUPPORTED_MODEL_TYPES, UnsupportedModelError } from "../src/positions/families.js";
import { KeyRotation, ropeAttentionFactor, ropeInverseFrequencies, type RopeSpec } from "../src/positions/rope.js";

/** Rotation of one head vector at `position`, written out directly from the RoPE definition. */
function rotateAt(vector: number[], spec: RopeSpec, position: number): number[] {
  const inv = ropeInverseFrequencies(spec);
  const out = [...vector];
  const half = spec.rotary_dim / 2;
  for (let i = 0; i < half; i++) {
    const [a, b] = spec.layout === "rotate_half" ? [i, i + half] : [2 * i, 2 * i + 1];
    const angle = position * inv[i];
    out[a] = vector[a] * Math.cos(angle) - vector[b] * Math.sin(angle);
    out[b] = vector[b] * Math.cos(angle) + vector[a] * Math.sin(angle);
  }
  return out;
}

describe("KeyRotation", () => {
  for (const layout of ["rotate_half", "interleaved"] as const) {
    it(`${layout}: moving a key by d positions equals rotating it at p + d; partial dims pass through`, () => {
      const spec: RopeSpec = { layout, head_dim: 10, rotary_dim: 6, theta: 10000 };
      const raw = Array.from({ length: 10 }, (_, i) => Math.sin(i + 1) * 3);
      const atP = Float32Array.from(rotateAt(raw, spec, 37));
      const expected = rotateAt(raw, spec, 37 + 1000);
      const moved = new Float32Array(10);
      new KeyRotation(spec, ropeInverseFrequencies(spec), 1000).apply(atP, 0, moved, 0, 1);
      for (let d = 0; d < 10; d++) assert.ok(Math.abs(moved[d] - expected[d]) < 1e-4, `dim ${d}`);
      assert.deepEqual(Array.from(moved.slice(6)), Array.from(atP.slice(6)));
      // in place, and back again
      new KeyRotation(spec, ropeInverseFrequencies(spec), -1000).apply(moved, 0, moved, 0, 1);
      for (let d = 0; d < 10; d++) assert.ok(Math.abs(moved[d] - atP[d]) < 1e-4);
    });
  }

  it("query-key scores depend only on the distance", () => {
    const spec: RopeSpec = { layout: "rotate_half", head_dim: 8, rotary_dim: 8, theta: 500 };
    const q = [1, -2, 0.5, 3, -1, 0.25, 2, -0.75];
    const k = [0.3, 1, -1.5, 0.2, 2, -2, 1, 0.5];
    const dot = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i], 0);
    const near = dot(rotateAt(q, spec, 12), rotateAt(k, spec, 5));
    const far = dot(rotateAt(q, spec, 1012), rotateAt(k, spec, 1005));
    assert.ok(Math.abs(near - far) < 1e-9);
  });
});

describe("RoPE scaling", () => {
  const base: RopeSpec = { layout: "rotate_half", head_dim: 64, rotary_dim: 64, theta: 10000 };
  const plain = ropeInverseFrequencies(base);

  it("default frequencies follow theta^(-2i/d)", () => {
    assert.ok(Math.abs(plain[0] - 1) < 1e-7);
    assert.ok(Math.abs(plain[16] - Math.pow(10000, -0.5)) < 1e-7);
  });

  it("linear divides every frequency; dynamic keeps them inside the trained length", () => {
    const linear = ropeInverseFrequencies({ ...base, scaling: { rope_type: "linear", factor: 4 } });
    plain.forEach((f, i) => assert.ok(Math.abs(linear[i] - f / 4) < 1e-9));
    assert.deepEqual(ropeInverseFrequencies({ ...base, scaling: { rope_type: "dynamic", factor: 2 } }), plain);
  });

  it("llama3 keeps high frequencies, divides low ones by the factor and blends between", () => {
    const scaled = ropeInverseFrequencies({
      ...base,
      theta: 500000,
      scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    });
    const unscaled = ropeInverseFrequencies({ ...base, theta: 500000 });
    assert.equal(scaled[0], unscaled[0]);
    assert.ok(Math.abs(scaled[31] - unscaled[31] / 8) < 1e-12);
    const middle = scaled.findIndex((f, i) => f !== unscaled[i] && Math.abs(f - unscaled[i] / 8) > 1e-12);
    assert.ok(middle > 0 && scaled[middle] < unscaled[middle] && scaled[middle] > unscaled[middle] / 8);
  });

  it("yarn interpolates low frequencies and scales magnitude by 0.1 ln(s) + 1", () => {
    const spec: RopeSpec = { ...base, scaling: { rope_type: "yarn", factor: 4, original_max_position_embeddings: 4096 } };
    const scaled = ropeInverseFrequencies(spec);
    assert.equal(scaled[0], plain[0]);
    assert.ok(Math.abs(scaled[31] - plain[31] / 4) < 1e-9);
    assert.ok(Math.abs(ropeAttentionFactor(spec) - (0.1 * Math.log(4) + 1)) < 1e-12);
  });

  it("longrope divides by the short or long factors and uses sqrt(1 + ln s / ln L)", () => {
    const short = Array.from({ length: 32 }, (_, i) => 1 + i / 32);
    const long = Array.from({ length: 32 }, (_, i) => 2 + i);
    const spec = (use_long_factor: boolean): RopeSpec => ({
      ...base,
      scaling: { rope_type: "longrope", short_factor: short, long_factor: long, original_max_position_embeddings: 4096, factor: 32, use_long_factor },
    });
    ropeInverseFrequencies(spec(false)).forEach((f, i) => assert.ok(Math.abs(f - plain[i] / short[i]) <= 1e-6 * f));
    ropeInverseFrequencies(spec(true)).forEach((f, i) => assert.ok(Math.abs(f - plain[i] / long[i]) <= 1e-6 * f));
    assert.ok(Math.abs(ropeAttentionFactor(spec(false)) - Math.sqrt(1 + Math.log(32) / Math.log(4096))) < 1e-12);
  });
});

describe("model families", () => {
  it("llama-style configs: GQA, explicit head_dim, rope_theta, rope_scaling", () => {
    const g = resolveGeometry({
      model_type: "llama", num_hidden_layers: 16, num_attention_heads: 32, num_key_value_heads: 8, hidden_size: 2048,
      max_position_embeddings: 131072, rope_theta: 500000,
      rope_scaling: { rope_type: "llama3", factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    });
    assert.equal(g.num_kv_heads, 8);
    assert.equal(g.head_dim, 64);
    assert.equal(g.max_positions, 131072);
    assert.ok(g.scheme.kind === "rope" && g.scheme.rope.theta === 500000 && g.scheme.rope.scaling?.rope_type === "llama3");
    const q3 = resolveGeometry({ model_type: "qwen3", num_hidden_layers: 2, num_attention_heads: 16, num_key_value_heads: 8, hidden_size: 1024, head_dim: 128 });
    assert.equal(q3.head_dim, 128);
  });

  it("transformers >= 4.56 configs: theta and scaling inside rope_parameters, which win over stale top-level keys", () => {
    const base = { model_type: "llama", num_hidden_layers: 2, num_attention_heads: 8, hidden_size: 512, max_position_embeddings: 131072 };
    const rope_parameters = { rope_type: "llama3", rope_theta: 500000, factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
    for (const config of [{ ...base, rope_parameters }, { ...base, rope_parameters, rope_theta: 10000, rope_scaling: { rope_type: "linear", factor: 2 } }]) {
      const { scheme } = resolveGeometry(config);
      assert.ok(scheme.kind === "rope");
      assert.equal(scheme.rope.theta, 500000);
      assert.equal(scheme.rope.scaling?.rope_type, "llama3");
    }
  });

  it("partial rotary: gpt_neox rotary_pct, phi partial_rotary_factor, gptj rotary_dim (interleaved)", () => {
    const neox = resolveGeometry({ model_type: "gpt_neox", num_hidden_layers: 6, num_attention_heads: 8, hidden_size: 512, rotary_pct: 0.25, rotary_emb_base: 10000, max_position_embeddings: 2048 });
    assert.ok(neox.scheme.kind === "rope" && neox.scheme.rope.rotary_dim === 16 && neox.scheme.rope.layout === "rotate_half");
    const phi = resolveGeometry({ model_type: "phi", num_hidden_layers: 2, num_attention_heads: 32, hidden_size: 2560, partial_rotary_factor: 0.4 });
    assert.ok(phi.scheme.kind === "rope" && phi.scheme.rope.rotary_dim === 32);
    const gptj = resolveGeometry({ model_type: "gptj", n_layer: 28, n_head: 16, n_embd: 4096, rotary_dim: 64, n_positions: 2048 });
    assert.ok(gptj.scheme.kind === "rope" && gptj.scheme.rope.layout === "interleaved" && gptj.scheme.rope.rotary_dim === 64);
    assert.equal(gptj.max_positions, 2048);
  });

  it("ALiBi and learned positions", () => {
    assert.deepEqual(resolveGeometry({ model_type: "bloom", n_layer: 2, n_head: 4, hidden_size: 64 }).scheme, { kind: "alibi", positions: "mask_cumsum" });
    const mpt = { model_type: "mpt", n_layers: 2, n_heads: 4, d_model: 64, max_seq_len: 2048 };
    assert.deepEqual(resolveGeometry(mpt).scheme, { kind: "alibi", positions: "key_index" });
    assert.deepEqual(resolveGeometry({ ...mpt, attn_config: { alibi: false } }).scheme, { kind: "learned" });
    const falcon = { model_type: "falcon", num_hidden_layers: 2, num_attention_heads: 4, hidden_size: 64 };
    assert.equal(resolveGeometry(falcon).scheme.kind, "rope");
    assert.equal(resolveGeometry({ ...falcon, alibi: true }).scheme.kind, "alibi");
    const gpt2 = resolveGeometry({ model_type: "gpt2", n_layer: 12, n_head: 12, n_embd: 768, n_positions: 1024 });
    assert.deepEqual(gpt2.scheme, { kind: "learned" });
    assert.equal(gpt2.max_positions, 1024);
  });

  it("every required family has a row", () => {
    for (const type of ["llama", "mistral", "qwen2", "qwen3", "falcon", "mpt", "gpt_neox", "gptj", "stablelm", "phi", "phi3", "gemma", "gemma2", "olmo", "granite", "gpt2", "opt"]) {
      assert.ok(SUPPORTED_MODEL_TYPES.includes(type), type);
    }
  });

  it("an unsupported model_type names the supported ones", () => {
    assert.throws(
      () => resolveGeometry({ model_type: "mamba", num_hidden_layers: 2 }),
      (error: Error) => error instanceof UnsupportedModelError && /"mamba"/.test(error.message) && error.message.includes("llama, "),
    );
  });

  it("unknown RoPE scaling, keys and layer kinds the package does not understand, and impossible rotary dims are refused by name", () => {
    const base = { model_type: "llama", num_hidden_layers: 2, num_attention_heads: 4, hidden_size: 64 };
    assert.throws(() => resolveGeometry({ ...base, rope_scaling: { rope_type: "magic", factor: 2 } }), /rope_scaling\.rope_type "magic" is not supported/);
    assert.throws(() => resolveGeometry({ ...base, rope_scaling: { type: "magic" } }), /rope_scaling\.type "magic" is not supported/);
    assert.throws(() => resolveGeometry({ ...base, rope_parameters: { rope_type: "yarn", factor: 2, original_max_position_embeddings: 8, beta: 3 } }), /rope_parameters\.beta is not understood/);
    assert.throws(() => resolveGeometry({ ...base, rope_scaling: { rope_type: "llama3", factor: 8 } }), /rope_scaling\.low_freq_factor: rope scaling "llama3" needs a number/);
    assert.throws(() => resolveGeometry({ ...base, partial_rotary_factor: 0.1 }), /rotary dimension/);
    const mistral = { ...base, model_type: "mistral" };
    assert.throws(() => resolveGeometry({ ...mistral, sliding_window: "4096" }), /config\.json: sliding_window is "4096", expected a positive integer or null/);
    assert.throws(() => resolveGeometry({ ...mistral, sliding_window: 8, layer_types: ["sliding_attention", "chunked_attention"] }), /layer_types\[1\] is "chunked_attention", which attention-sinks does not know/);
  });

  it("sliding windows: per family rule, transformers' layer_types list first", () => {
    const base = { num_hidden_layers: 4, num_attention_heads: 4, hidden_size: 64 };
    assert.deepEqual(resolveGeometry({ ...base, model_type: "mistral", sliding_window: 4096 }).sliding_window, { size: 4096, layers: [0, 1, 2, 3] });
    assert.equal(resolveGeometry({ ...base, model_type: "mistral", sliding_window: null }).sliding_window, null);
    assert.equal(resolveGeometry({ ...base, model_type: "llama", sliding_window: 4096 }).sliding_window, null, "llama graphs apply none");
    const qwen = { ...base, model_type: "qwen2", sliding_window: 32768, max_window_layers: 2 };
    assert.equal(resolveGeometry(qwen).sliding_window, null, "use_sliding_window defaults to false");
    assert.deepEqual(resolveGeometry({ ...qwen, use_sliding_window: true }).sliding_window?.layers, [2, 3]);
    assert.deepEqual(resolveGeometry({ ...base, model_type: "gemma2", sliding_window: 4096 }).sliding_window?.layers, [0, 2]);
    const layer_types = ["full_attention", "sliding_attention", "full_attention", "full_attention"];
    assert.deepEqual(resolveGeometry({ ...base, model_type: "gemma2", sliding_window: 4096, layer_types }).sliding_window?.layers, [1]);
  });

  it("falcon: multi_query (true unless the config says otherwise) means one KV head, new_decoder_architecture reads num_kv_heads", () => {
    const falcon = { model_type: "falcon", num_hidden_layers: 2, num_attention_heads: 8, hidden_size: 64 };
    assert.equal(resolveGeometry(falcon).num_kv_heads, 1, "transformers' default multi_query is true");
    assert.equal(resolveGeometry({ ...falcon, multi_query: false }).num_kv_heads, 8);
    assert.equal(resolveGeometry({ ...falcon, new_decoder_architecture: true, num_kv_heads: 2 }).num_kv_heads, 2);
    assert.equal(resolveGeometry({ ...falcon, new_decoder_architecture: true, multi_query: true, num_kv_heads: 2 }).num_kv_heads, 2);
    assert.equal(resolveGeometry({ model_type: "llama", num_hidden_layers: 2, num_attention_heads: 8, hidden_size: 64, multi_query: true }).num_kv_heads, 8, "only Falcon reads multi_query");
  });
});

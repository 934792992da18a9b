/**
 * Every row of the family table proven on its own shape: a tiny fixture per family with its real config keys
 * (test/support/fixtures/families.ts) is read by the package, checked against the geometry its graph was
 * built with, and streamed through the sink cache 4x past its capacity with 0, 1 and 4 sinks against the
 * StreamingLLM oracle. Families whose graph applies a sliding window are streamed with a cache that fills
 * the window exactly, and refuse a cache larger than it. Then a few fixtures in the other export styles (quantized
 * linears with their biases, fused norms around parallel blocks, sliding windows through MultiHeadAttention's
 * mask bias) against the same oracle, and the one combination the graph builder refuses.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DynamicCache } from "@huggingface/transformers";
import { AutoModelForCausalLM, AttentionSinkOptionError, sinkCacheStats } from "../src/index.js";
import { FAMILIES, resolveGeometry } from "../src/positions/families.js";
import { ropeInverseFrequencies } from "../src/positions/rope.js";
import type { DecoderSpec, DecoderWeights } from "../src/architecture/decoder_spec.js";
import { buildDecoderOnnx, type OnnxExportOptions } from "../src/onnx/decoder_export.js";
import { FAMILY_COMPACTION, FAMILY_FIXTURES, FAMILY_WINDOW, FIXTURE_SLIDING_WINDOW, type FamilyFixture } from "./support/fixtures/families.js";
import { randomDecoderWeights } from "./support/fixtures/random_weights.js";
import { writeFixtureModel } from "./support/fixtures/tiny_models.js";
import { quantizedWeights } from "./support/reference/quantized_weights.js";
import { StreamingReference } from "./support/reference/streaming_reference.js";
import { ids, logitsAt, maxAbsDiff, tokenStream } from "./support/streaming.js";

const TOLERANCE = 1e-4;
const root = await mkdtemp(join(tmpdir(), "attention-sinks-families-"));
after(() => rm(root, { recursive: true, force: true }));

const directories = new Map<number, ReturnType<typeof write>>();
const write = async (fixture: FamilyFixture, dir: string) => ({ dir, ...(await writeFixtureModel(dir, fixture.spec, fixture.config, { seed: 11 })) });
/** The fixture's model directory, written once. */
function written(fixture: FamilyFixture, index: number): ReturnType<typeof write> {
  if (!directories.has(index)) directories.set(index, write(fixture, join(root, String(index))));
  return directories.get(index)!;
}

/**
 * Streams 4x (sink + FAMILY_WINDOW) tokens through `model` with `sink` sinks, prompt of 3 then one at a time,
 * each token's logits within `tolerance` of the oracle computing with `weights`; returns how many were compared.
 */
async function streamsAsOracle(model: { dir: string; spec: DecoderSpec }, weights: DecoderWeights, sink: number, windowed: boolean, tolerance: number): Promise<number> {
  const streaming = await AutoModelForCausalLM.from_pretrained(model.dir, {
    local_files_only: true,
    attention_sink_size: sink,
    attention_sink_window_size: FAMILY_WINDOW,
    // Windowed fixtures ask for more masked slots than their window holds: the package must give them
    // only what fits, so that every slot, masked ones included, stays inside the graph's window.
    attention_sink_compaction_interval: windowed ? 4 * FAMILY_COMPACTION : FAMILY_COMPACTION,
  });
  const capacity = sink + FAMILY_WINDOW;
  if (windowed) assert.equal(streaming.attention_sinks.compaction_interval, Math.min(4 * FAMILY_COMPACTION, FIXTURE_SLIDING_WINDOW - capacity));
  const oracle = new StreamingReference(model.spec, weights, { sink_size: sink, window_size: FAMILY_WINDOW });
  let compared = 0;
  const stream = tokenStream(4 * capacity, model.spec.vocab_size, 3 + sink);
  const cache = new DynamicCache();
  const prompt = stream.slice(0, 3);
  const first = await streaming.forward({ input_ids: ids(prompt), past_key_values: cache });
  oracle.forward(prompt).forEach((expected, t) => {
    assert.ok(maxAbsDiff(logitsAt(first.logits, 0, t), expected) < tolerance, `sink ${sink}: prompt token ${t}`);
  });
  for (let t = prompt.length; t < stream.length; t++) {
    const out = await streaming.forward({ input_ids: ids([stream[t]]), past_key_values: cache });
    const diff = maxAbsDiff(logitsAt(out.logits, 0, 0), oracle.forward([stream[t]])[0]);
    assert.ok(diff < tolerance, `sink ${sink}: token ${t} differs from the oracle by ${diff}`);
    assert.equal(sinkCacheStats(cache)!.cached_tokens, Math.min(t + 1, capacity));
    compared++;
  }
  return compared;
}

describe("every family on its own shape", () => {
  it("every row of the family table has a fixture", () => {
    const covered = new Set(FAMILY_FIXTURES.map((fixture) => fixture.config.model_type));
    assert.deepEqual(Object.keys(FAMILIES).filter((type) => !covered.has(type)), []);
  });

  FAMILY_FIXTURES.forEach((fixture, index) => {
    it(`${fixture.name}: the config reads as the graph's geometry`, () => {
      const { spec, config } = fixture;
      const geometry = resolveGeometry(config, 4 + FAMILY_WINDOW + FAMILY_COMPACTION);
      assert.equal(geometry.num_layers, spec.num_layers);
      assert.equal(geometry.num_kv_heads, spec.num_kv_heads, "KV heads");
      assert.equal(geometry.head_dim, spec.head_dim, "head_dim");
      assert.deepEqual(geometry.sliding_window, spec.sliding_window ?? null, "sliding window");
      assert.equal(geometry.scheme.kind, spec.positions.kind);
      if (geometry.scheme.kind === "rope" && spec.positions.kind === "rope") {
        const { rope } = geometry.scheme;
        assert.deepEqual([rope.layout, rope.rotary_dim, rope.theta], [spec.positions.rope.layout, spec.positions.rope.rotary_dim, spec.positions.rope.theta]);
        assert.deepEqual(Array.from(geometry.scheme.inverse_frequencies), Array.from(ropeInverseFrequencies(spec.positions.rope)), "RoPE frequencies");
      }
    });

    // A window the tests can reach (the long-context Phi-3 keeps one past every position it addresses).
    const windowed = fixture.spec.sliding_window?.size === FIXTURE_SLIDING_WINDOW;

    it(`${fixture.name}: streams 4x past the cache with sinks 0, 1 and 4 as the oracle`, async () => {
      const model = await written(fixture, index);
      let compared = 0;
      for (const sink of [0, 1, 4]) compared += await streamsAsOracle(model, model.weights, sink, windowed, TOLERANCE);
      // 4 x (sink + window) tokens per sink size, all but the 3 of each prompt one at a time.
      assert.equal(compared, 4 * (0 + 1 + 4 + 3 * FAMILY_WINDOW) - 3 * 3, "every streamed token was compared");
    });

    if (windowed) {
      it(`${fixture.name}: a cache larger than the graph's sliding window is refused; the default fits inside it`, async () => {
        const model = await written(fixture, index);
        await assert.rejects(
          AutoModelForCausalLM.from_pretrained(model.dir, { local_files_only: true, attention_sink_size: 4, attention_sink_window_size: FIXTURE_SLIDING_WINDOW }),
          (error: Error) => error instanceof AttentionSinkOptionError && /exceeds the 12 slots the sliding window .*\(sliding_window\); use attention_sink_window_size <= 8/.test(error.message),
        );
        const fitted = await AutoModelForCausalLM.from_pretrained(model.dir, { local_files_only: true });
        const { capacity, compaction_interval } = fitted.attention_sinks;
        assert.ok(capacity + compaction_interval <= FIXTURE_SLIDING_WINDOW, `default ${capacity} + ${compaction_interval} slots`);
        assert.equal(fitted.attention_sinks.sink_size, 4);
      });
    }
  });
});

/** A family fixture by the start of its name. */
function family(name: string): FamilyFixture {
  const fixture = FAMILY_FIXTURES.find((candidate) => candidate.name.startsWith(name));
  assert.ok(fixture, `a family fixture named ${name}`);
  return fixture;
}

/** The same fixture with as many key/value heads as query heads (MultiHeadAttention needs them). */
function fullMultiHead(fixture: FamilyFixture): FamilyFixture {
  const { spec, config } = fixture;
  return { ...fixture, spec: { ...spec, num_kv_heads: spec.num_heads }, config: { ...config, num_key_value_heads: spec.num_heads } };
}

interface StyledFamily {
  name: string;
  fixture: FamilyFixture;
  options: OnnxExportOptions;
  tolerance: number;
}

/** Family features (biases, parallel blocks, sliding windows, scaled ALiBi) in the other export styles. */
const STYLED_FAMILIES: readonly StyledFamily[] = [
  {
    name: "falcon (RW): q/k/v, dense and MLP biases after MatMulNBits, scaled ALiBi, SkipLayerNormalization",
    fixture: family("falcon (RW)"),
    options: { dtype: "q4", fused_norms: true },
    tolerance: TOLERANCE,
  },
  { name: "falcon (40B): parallel block with its own MLP norm, fused norms, q4", fixture: family("falcon (40B)"), options: { dtype: "q4", fused_norms: true }, tolerance: TOLERANCE },
  {
    name: "phi: parallel block sharing its norm, MLP biases, fused norms, float16 weights and cache",
    fixture: family("phi:"),
    options: { dtype: "fp16", kv_dtype: "fp16", fused_norms: true },
    tolerance: 1e-2,
  },
  { name: "qwen2: q/k/v biases, a sliding layer beside a full one, q4, fused norms", fixture: family("qwen2"), options: { dtype: "q4", fused_norms: true }, tolerance: TOLERANCE },
  {
    name: "qwen2 (full multi-head): the sliding and the full mask bias through MultiHeadAttention, RotaryEmbedding",
    fixture: fullMultiHead(family("qwen2")),
    options: { attention: "MultiHeadAttention", fused_norms: true },
    tolerance: TOLERANCE,
  },
  {
    name: "qwen2 (full multi-head): both mask biases in float16, MultiHeadAttention in float16",
    fixture: fullMultiHead(family("qwen2")),
    options: { attention: "MultiHeadAttention", fused_norms: true, kv_dtype: "fp16" },
    // Attention itself runs in float16 (as in the export styles' float16 contrib attention).
    tolerance: 2e-2,
  },
  { name: "gemma2: embeddings scaled, GeGLU, sliding layer 0, q4f16", fixture: family("gemma2"), options: { dtype: "q4f16" }, tolerance: 1e-2 },
];

describe("family features in the other export styles", () => {
  STYLED_FAMILIES.forEach(({ name, fixture, options, tolerance }, index) => {
    it(`${name}: streams 4x past the cache with 4 sinks as the oracle`, async (context) => {
      const dir = join(root, `styled-${index}`);
      const model = { dir, ...(await writeFixtureModel(dir, fixture.spec, fixture.config, { seed: 11, ...options })) };
      const dtype = options.dtype;
      const weights = dtype === "q8" || dtype === "q4" || dtype === "q4f16" ? quantizedWeights(model.weights, dtype) : model.weights;
      const windowed = fixture.spec.sliding_window?.size === FIXTURE_SLIDING_WINDOW;
      const compared = await streamsAsOracle(model, weights, 4, windowed, tolerance);
      assert.equal(compared, 4 * (4 + FAMILY_WINDOW) - 3);
      context.diagnostic(`${compared} tokens within ${tolerance} of the oracle`);
    });
  });

  it("a GroupQueryAttention export of a sliding-window model is refused, naming the styles that can", () => {
    const { spec } = family("mistral");
    assert.throws(
      () => buildDecoderOnnx(spec, randomDecoderWeights(spec, 0), { attention: "GroupQueryAttention", position_ids: false, fused_norms: true }),
      /GroupQueryAttention graphs cannot apply a sliding window; export this model with attention "standard" or "MultiHeadAttention"/,
    );
  });
});

/**
 * Every row of the family table proven on its own shape: a tiny fixture per family with its real config keys
 * (test/support/fixtures/families.ts) is read by the package, checked against the geometry its graph was
 * built with, and streamed through the sink cache 4x past its capacity with 0, 1 and 4 sinks against the
 * StreamingLLM oracle. Families whose graph applies a sliding window are streamed with a cache that fills
 * the window exactly, and refuse a cache larger than it.
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
import { FAMILY_COMPACTION, FAMILY_FIXTURES, FAMILY_WINDOW, FIXTURE_SLIDING_WINDOW, type FamilyFixture } from "./support/fixtures/families.js";
import { writeFixtureModel } from "./support/fixtures/tiny_models.js";
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
      for (const sink of [0, 1, 4]) {
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
        const oracle = new StreamingReference(model.spec, model.weights, { sink_size: sink, window_size: FAMILY_WINDOW });
        const stream = tokenStream(4 * capacity, model.spec.vocab_size, 3 + sink);
        const cache = new DynamicCache();
        const prompt = stream.slice(0, 3);
        const first = await streaming.forward({ input_ids: ids(prompt), past_key_values: cache });
        oracle.forward(prompt).forEach((expected, t) => {
          assert.ok(maxAbsDiff(logitsAt(first.logits, 0, t), expected) < TOLERANCE, `sink ${sink}: prompt token ${t}`);
        });
        for (let t = prompt.length; t < stream.length; t++) {
          const out = await streaming.forward({ input_ids: ids([stream[t]]), past_key_values: cache });
          const diff = maxAbsDiff(logitsAt(out.logits, 0, 0), oracle.forward([stream[t]])[0]);
          assert.ok(diff < TOLERANCE, `sink ${sink}: token ${t} differs from the oracle by ${diff}`);
          assert.equal(sinkCacheStats(cache)!.cached_tokens, Math.min(t + 1, capacity));
          compared++;
        }
      }
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

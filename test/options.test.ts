/** Validation of the attention-sink options, named in every error. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { AttentionSinkOptionError, resolveSinkPolicy, splitSinkOptions, type PositionBudget } from "../src/cache/options.js";

/** Positions are slot indices (RoPE): masked slots waiting for compaction use positions too. */
const slotPositions = (max_positions: number | null): PositionBudget => ({ max_positions, lazy_eviction: true, masked_slots_use_positions: true });
/** Positions count attended tokens (learned tables): masked slots use none. */
const attendedPositions = (max_positions: number | null): PositionBudget => ({ max_positions, lazy_eviction: true, masked_slots_use_positions: false });

describe("attention-sink options", () => {
  it("defaults to 4 sinks and a 1020-token window", () => {
    const policy = resolveSinkPolicy({}, slotPositions(4096));
    assert.equal(policy.sink_size, 4);
    assert.equal(policy.window_size, 1020);
    assert.equal(policy.capacity, 1024);
    assert.equal(policy.compaction_interval, 64);
  });

  it("names the option in every error", () => {
    const cases: [object, RegExp][] = [
      [{ attention_sink_size: 1.5 }, /attention_sink_size must be an integer/],
      [{ attention_sink_size: -1 }, /attention_sink_size must be at least 0/],
      [{ attention_sink_size: "4" }, /attention_sink_size must be an integer, got "4"/],
      [{ attention_sink_window_size: 0 }, /attention_sink_window_size must be at least 1/],
      [{ attention_sink_window_size: Number.NaN }, /attention_sink_window_size must be an integer/],
      [{ attention_sink_compaction_interval: -2 }, /attention_sink_compaction_interval must be at least 0/],
      [{ attention_sink_size: 4, attention_sink_window_size: 2045 }, /4 \+ 2045 = 2049 exceeds the 2048 positions.*attention_sink_window_size <= 2044/],
    ];
    for (const [options, message] of cases) {
      assert.throws(() => resolveSinkPolicy(options, slotPositions(2048)), (e: Error) => e instanceof AttentionSinkOptionError && message.test(e.message));
    }
  });

  it("the default window shrinks to the positions the model addresses; an explicit one is checked", () => {
    // 512 positions: 4 sinks, 32 slots of room for lazy eviction, 476 window
    assert.deepEqual(resolveSinkPolicy({}, slotPositions(512)), { sink_size: 4, window_size: 476, capacity: 480, compaction_interval: 30 });
    assert.equal(resolveSinkPolicy({}, attendedPositions(512)).window_size, 508, "no room needed where slots are not positions");
    // 200 positions: room for floor(200 / 16) = 12 masked slots, and an interval of floor(188 / 16) = 11.
    assert.deepEqual(resolveSinkPolicy({}, slotPositions(200)), { sink_size: 4, window_size: 184, capacity: 188, compaction_interval: 11 });
    assert.equal(resolveSinkPolicy({ attention_sink_window_size: 508 }, slotPositions(512)).compaction_interval, 0);
    // Sinks alone past the positions: the advice is about the sinks, not the window.
    assert.throws(() => resolveSinkPolicy({ attention_sink_size: 600 }, slotPositions(512)), /attention_sink_size 600 leaves no room for a window in the 512 positions.*use attention_sink_size < 512/);
  });

  it("sink 0 is plain window attention; unbounded models take any size", () => {
    assert.equal(resolveSinkPolicy({ attention_sink_size: 0, attention_sink_window_size: 64 }, slotPositions(512)).capacity, 64);
    assert.equal(resolveSinkPolicy({ attention_sink_window_size: 100_000 }, slotPositions(null)).capacity, 100_004);
  });

  it("keeps the compaction interval inside the positions the model addresses", () => {
    assert.equal(resolveSinkPolicy({ attention_sink_window_size: 508 }, slotPositions(512)).compaction_interval, 0);
    assert.equal(resolveSinkPolicy({ attention_sink_window_size: 500, attention_sink_compaction_interval: 40 }, slotPositions(512)).compaction_interval, 8);
    assert.equal(resolveSinkPolicy({ attention_sink_window_size: 500, attention_sink_compaction_interval: 40 }, attendedPositions(512)).compaction_interval, 40);
  });

  it("a graph's own sliding window bounds every slot, masked ones included, whatever the positions", () => {
    const windowed = { ...attendedPositions(4096), sliding_window: 512 };
    assert.deepEqual(resolveSinkPolicy({}, windowed), { sink_size: 4, window_size: 476, capacity: 480, compaction_interval: 30 });
    assert.equal(resolveSinkPolicy({ attention_sink_window_size: 500, attention_sink_compaction_interval: 40 }, windowed).compaction_interval, 8);
    assert.throws(() => resolveSinkPolicy({ attention_sink_window_size: 600 }, windowed), /4 \+ 600 = 604 exceeds the 512 slots the sliding window of this model's graph attends \(sliding_window\); use attention_sink_window_size <= 508/);
    assert.equal(resolveSinkPolicy({}, { ...slotPositions(256), sliding_window: 4096 }).capacity, 240, "the smaller limit wins");
  });

  it("splits our options from those transformers.js receives", () => {
    const { sink, rest } = splitSinkOptions({ attention_sink_size: 2, dtype: "fp32", device: "cpu" });
    assert.deepEqual(sink, { attention_sink_size: 2 });
    assert.deepEqual(rest, { dtype: "fp32", device: "cpu" });
  });
});

/**
 * Saving and restoring a stream at the backend seam: a restored stream continues bit for bit as the
 * uninterrupted one (every positional family, float16 caches, masked slots pending compaction), its record
 * stays the same size once the cache is full, and corrupt or foreign records are refused without harm.
 */
import { before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as transformers from "@huggingface/transformers";
import { StateRecordError, decodeStateRecord, encodeStateRecord } from "../src/backend/state_record.js";
import type { StreamingBackend } from "../src/backend/backend.js";
import { loadTransformersBackend } from "../src/transformers/backend.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";
import { TINY_VARIANTS } from "./support/fixtures/tiny_models.js";
import { seededRandom } from "./support/random.js";

transformers.env.allowRemoteModels = false;

let scratch = "";
before(async () => {
  scratch = await mkdtemp(join(tmpdir(), "attention-sinks-stream-state-"));
});

const SIZES = { attention_sink_size: 4, attention_sink_window_size: 20 };

function tokens(count: number, seed: number): number[] {
  const random = seededRandom(seed);
  return Array.from({ length: count }, () => 3 + Math.floor(random() * 60));
}

/** Feeds `ids` one token at a time (or in one call), returning every logits row it produced. */
async function feedAll(backend: StreamingBackend, ids: readonly number[]): Promise<Float32Array[]> {
  const rows: Float32Array[] = [];
  for (const id of ids) rows.push((await backend.feed([id])).slice());
  return rows;
}

describe("stream snapshot and restore", () => {
  for (const variant of TINY_VARIANTS) {
    it(`${variant}: a restored stream continues exactly as the uninterrupted one, at every point of the compaction cycle`, async () => {
      const dir = join(scratch, variant);
      await writeTinyTextModel(dir, variant, { seed: 3 });
      const original = await loadTransformersBackend(dir, SIZES);
      const other = await loadTransformersBackend(dir, SIZES);
      await original.feed(tokens(30, 1)); // full, with masked slots waiting for compaction
      const continuation = tokens(12, 2);
      // Snapshot after each of several steps, so some land with masked slots pending and some just after compaction.
      for (let step = 0; step < 4; step++) {
        const state = original.snapshot();
        other.restore(state);
        assert.deepEqual(other.stats(), original.stats());
        const expected = await feedAll(original, continuation.slice(step * 3, step * 3 + 3));
        const restored = await feedAll(other, continuation.slice(step * 3, step * 3 + 3));
        assert.deepEqual(restored, expected, `step ${step}: logits after restoring equal the uninterrupted stream's`);
      }
    });
  }

  it("float16 caches restore exactly too", async () => {
    const dir = join(scratch, "llama-fp16");
    await writeTinyTextModel(dir, "llama", { seed: 3, kv_dtype: "fp16" });
    const original = await loadTransformersBackend(dir, SIZES);
    const other = await loadTransformersBackend(dir, SIZES);
    await original.feed(tokens(37, 4));
    other.restore(original.snapshot());
    assert.deepEqual(await feedAll(other, tokens(9, 5)), await feedAll(original, tokens(9, 5)));
  });

  it("the record has one size once the cache is full, however long the stream", async () => {
    const dir = join(scratch, "llama");
    const backend = await loadTransformersBackend(dir, SIZES);
    const sizes = new Set<number>();
    await backend.feed(tokens(24, 6));
    for (let i = 0; i < 200; i++) {
      await backend.feed([3 + (i % 60)]);
      sizes.add(backend.snapshot().byteLength);
    }
    assert.equal(sizes.size, 1, `one record size: ${[...sizes]}`);
    const { kv_cache_bytes } = backend.stats();
    const [size] = sizes;
    assert.ok(size >= kv_cache_bytes && size < kv_cache_bytes + 4096, `record of ${size} bytes for ${kv_cache_bytes} bytes of KV`);
  });

  it("an empty stream and a dense stream restore", async () => {
    const dir = join(scratch, "llama");
    const sink = await loadTransformersBackend(dir, SIZES);
    const empty = sink.snapshot();
    await sink.feed(tokens(5, 7));
    sink.restore(empty);
    assert.equal(sink.stats().seen_tokens, 0);
    const dense = await loadTransformersBackend(dir, { experiment: "transformers" });
    const denseOther = await loadTransformersBackend(dir, { experiment: "transformers" });
    await dense.feed(tokens(10, 8));
    denseOther.restore(dense.snapshot());
    assert.deepEqual(await feedAll(denseOther, tokens(4, 9)), await feedAll(dense, tokens(4, 9)));
  });

  it("corrupt, truncated and foreign records are refused and the stream is kept", async () => {
    const llama = await loadTransformersBackend(join(scratch, "llama"), SIZES);
    await llama.feed(tokens(26, 10));
    const state = llama.snapshot();
    const before = llama.stats();
    const flipped = state.slice();
    flipped[state.length >> 1] ^= 1;
    const cases: [Uint8Array, RegExp][] = [
      [flipped, /checksum does not match/],
      [state.subarray(0, state.length - 100), /checksum does not match|ends early/],
      [new TextEncoder().encode("hello"), /not an attention-sinks state record/],
      [encodeStateRecord("attention-sinks stream", { signature: "other" }, []), /another model or other attention-sink settings/],
      [encodeStateRecord("something else", {}, []), /"something else" record where a "attention-sinks stream" record was expected/],
    ];
    const gptj = await loadTransformersBackend(join(scratch, "gptj"), SIZES);
    const smaller = await loadTransformersBackend(join(scratch, "llama"), { attention_sink_size: 4, attention_sink_window_size: 12 });
    cases.push([gptj.snapshot(), /another model or other attention-sink settings/]);
    cases.push([smaller.snapshot(), /another model or other attention-sink settings/]);
    for (const [record, message] of cases) {
      assert.throws(() => llama.restore(record), (error: Error) => error instanceof StateRecordError && message.test(error.message));
      assert.deepEqual(llama.stats(), before, "the stream is unchanged");
    }
    // A record that passes its checksum but whose arrays do not fit the header is refused too.
    const { header } = decodeStateRecord(state, "attention-sinks stream");
    assert.throws(() => llama.restore(encodeStateRecord("attention-sinks stream", header, [])), StateRecordError);
    assert.deepEqual(llama.stats(), before);
  });
});

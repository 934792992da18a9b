/**
 * The core contract, checked against the literal StreamingLLM oracle (src/reference) on tiny random models
 * of every positional variant: identical logits through forward and generate, bounded cache, chunked long
 * prompts, multi-turn continuation, batches, and identity with plain transformers.js before the cache fills.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import * as transformers from "@huggingface/transformers";
import { DynamicCache, LogitsProcessor, LogitsProcessorList, Tensor } from "@huggingface/transformers";
import { AutoModelForCausalLM, sinkCacheStats, type StreamingModel } from "../src/index.js";
import { StreamingReference } from "./support/reference/streaming_reference.js";
import type { TinyVariant } from "./support/fixtures/tiny_models.js";
import { chunkPlan, fixture, ids, logitsAt, maxAbsDiff, tokenStream, type Fixture } from "./support/streaming.js";

const VARIANTS: TinyVariant[] = ["llama", "gptj", "gpt_neox", "bloom", "mpt", "gpt2"];
const TOLERANCE = 1e-4;

/** Largest difference, ignoring entries generate() masked to -Infinity (EOS under min_new_tokens). */
function generatedDiff(recorded: Float32Array, expected: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < recorded.length; i++) {
    if (recorded[i] !== -Infinity) worst = Math.max(worst, Math.abs(recorded[i] - expected[i]));
  }
  return worst;
}

/** Records the (last-position) logits generate() samples from, row by row. */
class LogitsRecorder extends LogitsProcessor {
  readonly steps: Float32Array[][] = [];
  override _call(_inputIds: bigint[][], logits: Tensor): Tensor {
    const [batch, vocab] = logits.dims;
    const data = logits.data as Float32Array;
    this.steps.push(Array.from({ length: batch }, (_, b) => data.slice(b * vocab, (b + 1) * vocab)));
    return logits;
  }
}

function recorder(): { list: LogitsProcessorList; recorder: LogitsRecorder } {
  const list = new LogitsProcessorList();
  const rec = new LogitsRecorder();
  list.push(rec);
  return { list, recorder: rec };
}

async function load(f: Fixture, sink: number, window: number, compaction?: number): Promise<StreamingModel> {
  return AutoModelForCausalLM.from_pretrained(f.dir, {
    local_files_only: true,
    attention_sink_size: sink,
    attention_sink_window_size: window,
    ...(compaction === undefined ? {} : { attention_sink_compaction_interval: compaction }),
  });
}

function oracle(f: Fixture, sink: number, window: number | null): StreamingReference {
  return new StreamingReference(f.spec, f.weights, { sink_size: sink, window_size: window });
}

/** Feeds `tokens` to the oracle in the library's chunks; returns the logits of every token. */
function oracleFeed(ref: StreamingReference, tokens: readonly number[], sink: number, window: number): Float32Array[] {
  const out: Float32Array[] = [];
  let at = 0;
  for (const n of chunkPlan(tokens.length, ref.length, sink, window)) {
    out.push(...ref.forward(tokens.slice(at, at + n)));
    at += n;
  }
  return out;
}

describe("streaming forward equals the StreamingLLM oracle", () => {
  for (const variant of VARIANTS) {
    it(`${variant}: sinks 0, 1, 4; several windows and compaction intervals; step by step`, async () => {
      const f = await fixture(variant);
      const vocab = f.spec.vocab_size;
      for (const sink of [0, 1, 4]) {
        for (const window of [5, 12]) {
          for (const compaction of [undefined, 0, 7]) {
            const model = await load(f, sink, window, compaction);
            const ref = oracle(f, sink, window);
            const capacity = sink + window;
            const stream = tokenStream(4 * capacity + 3, vocab, sink * 31 + window);
            const cache = new DynamicCache();
            // a prompt that fits, then one token at a time well past the cache size
            const prompt = stream.slice(0, 3);
            let out = await model.forward({ input_ids: ids(prompt), past_key_values: cache });
            let expected = oracleFeed(ref, prompt, sink, window);
            for (let t = 0; t < prompt.length; t++) {
              const d = maxAbsDiff(logitsAt(out.logits, 0, t), expected[t]);
              assert.ok(d < TOLERANCE, `${variant} sink ${sink} window ${window}: prompt token ${t} differs by ${d}`);
            }
            for (let t = prompt.length; t < stream.length; t++) {
              out = await model.forward({ input_ids: ids([stream[t]]), past_key_values: cache });
              expected = ref.forward([stream[t]]);
              const diff = maxAbsDiff(logitsAt(out.logits, 0, 0), expected[0]);
              assert.ok(
                diff < TOLERANCE,
                `${variant} sink ${sink} window ${window} compaction ${compaction}: token ${t} differs by ${diff}`,
              );
              const stats = sinkCacheStats(cache)!;
              assert.equal(stats.cached_tokens, Math.min(t + 1, capacity));
              assert.equal(stats.seen_tokens, t + 1);
            }
          }
        }
      }
    });
  }

  it("an off-by-one position would be caught: the oracle with another window disagrees", async () => {
    const f = await fixture("llama");
    const stream = tokenStream(40, f.spec.vocab_size, 3);
    const a = oracle(f, 4, 8).forward(stream.slice(0, 12)).at(-1)!;
    const refB = oracle(f, 4, 8);
    refB.forward(stream.slice(0, 1));
    const b = refB.forward(stream.slice(1, 12)).at(-1)!; // same tokens, different eviction history
    const c = oracle(f, 0, 12).forward(stream.slice(0, 12)).at(-1)!;
    assert.ok(maxAbsDiff(a, b) < TOLERANCE);
    const refShort = oracle(f, 4, 7);
    refShort.forward(stream.slice(0, 11));
    assert.ok(maxAbsDiff(a, refShort.forward(stream.slice(11, 12))[0]) > 1e-3, "one token fewer in the window changes the logits");
    assert.ok(maxAbsDiff(a, c) < TOLERANCE, "before eviction sinks change nothing");
  });
});

describe("generate() streams through the sink cache", () => {
  for (const variant of VARIANTS) {
    it(`${variant}: greedy generation far past the cache equals the oracle`, async () => {
      const f = await fixture(variant);
      for (const [sink, window] of [
        [4, 9],
        [0, 9],
        [1, 6],
      ] as const) {
        const model = await load(f, sink, window);
        const prompt = tokenStream(5, f.spec.vocab_size, 11);
        const { list, recorder: rec } = recorder();
        const sequences = (await model.generate({
          input_ids: ids(prompt),
          max_new_tokens: 4 * (sink + window),
          min_new_tokens: 4 * (sink + window),
          do_sample: false,
          logits_processor: list,
        })) as Tensor;
        const all = Array.from(sequences.data as BigInt64Array, Number);
        assert.equal(all.length, prompt.length + 4 * (sink + window));
        // One recorded step per generated token: the loop below compares every one of them.
        assert.equal(rec.steps.length, 4 * (sink + window), `${variant} sink ${sink} window ${window}: steps recorded`);
        const ref = oracle(f, sink, window);
        let expected = oracleFeed(ref, prompt, sink, window).at(-1)!;
        for (let step = 0; step < rec.steps.length; step++) {
          const diff = generatedDiff(rec.steps[step][0], expected);
          assert.ok(diff < TOLERANCE, `${variant} sink ${sink} window ${window}: step ${step} differs by ${diff}`);
          expected = ref.forward([all[prompt.length + step]])[0];
        }
      }
    });
  }
});

describe("before the cache fills", () => {
  for (const variant of VARIANTS) {
    it(`${variant}: logits equal plain transformers.js`, async () => {
      const f = await fixture(variant);
      const plain = await transformers.AutoModelForCausalLM.from_pretrained(f.dir, { local_files_only: true });
      const model = await load(f, 4, 40);
      const prompt = tokenStream(6, f.spec.vocab_size, 5);
      const runs = [];
      for (const m of [plain, model]) {
        const { list, recorder: rec } = recorder();
        await m.generate({ input_ids: ids(prompt), attention_mask: ids(prompt.map(() => 1)), max_new_tokens: 20, min_new_tokens: 20, do_sample: false, logits_processor: list });
        runs.push(rec.steps.map((s) => s[0]));
      }
      assert.equal(runs[0].length, 20, "plain transformers.js: one step per new token");
      assert.equal(runs[1].length, runs[0].length);
      for (let s = 0; s < runs[0].length; s++) {
        const d = generatedDiff(runs[0][s], runs[1][s]);
        assert.ok(d <= 1e-5, `${variant} step ${s} differs by ${d}: ${runs[0][s].slice(0, 4)} vs ${runs[1][s].slice(0, 4)}`);
      }
    });
  }
});

describe("long prompts", () => {
  it("a prompt many times the cache is consumed in chunks with the oracle's logits", async () => {
    for (const variant of ["llama", "gpt2", "bloom"] as const) {
      const f = await fixture(variant);
      const [sink, window] = [4, 10];
      const model = await load(f, sink, window);
      const prompt = tokenStream(97, f.spec.vocab_size, 17);
      const cache = new DynamicCache();
      const out = await model.forward({ input_ids: ids(prompt), past_key_values: cache });
      assert.deepEqual(out.logits.dims, [1, prompt.length, f.spec.vocab_size]);
      const ref = oracle(f, sink, window);
      const expected = oracleFeed(ref, prompt, sink, window);
      for (let t = 0; t < prompt.length; t++) {
        assert.ok(maxAbsDiff(logitsAt(out.logits, 0, t), expected[t]) < TOLERANCE, `${variant} token ${t}`);
      }
      assert.equal(sinkCacheStats(cache)!.cached_tokens, sink + window);
      // asking for the last logits only returns just those
      const cache2 = new DynamicCache();
      const last = await model.forward({ input_ids: ids(prompt), past_key_values: cache2, num_logits_to_keep: 1 });
      assert.deepEqual(last.logits.dims, [1, 1, f.spec.vocab_size]);
      assert.ok(maxAbsDiff(logitsAt(last.logits, 0, 0), expected.at(-1)!) < TOLERANCE);
    }
  });

  it("with an odd window, chunks past a full cache are ceil(window / 2) long, as the oracle is fed", async () => {
    const f = await fixture("llama");
    const [sink, window] = [3, 9];
    const model = await load(f, sink, window);
    const prompt = tokenStream(61, f.spec.vocab_size, 29);
    const out = await model.forward({ input_ids: ids(prompt), past_key_values: new DynamicCache() });
    const expected = oracleFeed(oracle(f, sink, window), prompt, sink, window);
    assert.ok(chunkPlan(prompt.length, 0, sink, window).includes(Math.ceil(window / 2)));
    assert.equal(expected.length, prompt.length);
    for (let t = 0; t < prompt.length; t++) {
      assert.ok(maxAbsDiff(logitsAt(out.logits, 0, t), expected[t]) < TOLERANCE, `token ${t}`);
    }
  });

  it("generate() takes a prompt longer than the cache", async () => {
    const f = await fixture("gptj");
    const model = await load(f, 2, 6);
    const prompt = tokenStream(50, f.spec.vocab_size, 23);
    const { list, recorder: rec } = recorder();
    await model.generate({ input_ids: ids(prompt), max_new_tokens: 5, min_new_tokens: 5, do_sample: false, logits_processor: list });
    assert.equal(rec.steps.length, 5);
    const ref = oracle(f, 2, 6);
    const expected = oracleFeed(ref, prompt, 2, 6).at(-1)!;
    assert.ok(generatedDiff(rec.steps[0][0], expected) < TOLERANCE);
  });
});

describe("multi-turn", () => {
  it("the same cache object continues the stream across generate() calls", async () => {
    const f = await fixture("llama");
    const [sink, window] = [4, 8];
    const model = await load(f, sink, window);
    const ref = oracle(f, sink, window);
    const cache = new DynamicCache();
    let transcript: number[] = [];
    let lastGenerated = -1;
    for (const [turn, resend] of [
      [0, false],
      [1, false],
      [2, true],
    ] as const) {
      const user = tokenStream(4, f.spec.vocab_size, 40 + turn);
      // turn 2 re-sends the whole transcript, as a chat template does; the streamed prefix is recognised
      const input = resend ? [...transcript, ...user] : user;
      const { list, recorder: rec } = recorder();
      const result = (await model.generate({
        input_ids: ids(input),
        past_key_values: cache,
        max_new_tokens: 7,
        min_new_tokens: 7,
        do_sample: false,
        logits_processor: list,
        return_dict_in_generate: true,
      })) as { sequences: Tensor; past_key_values: DynamicCache };
      assert.equal(result.past_key_values, cache);
      const sequence = Array.from(result.sequences.data as BigInt64Array, Number);
      const generated = sequence.slice(input.length);
      assert.equal(generated.length, 7, `turn ${turn}: tokens generated`);
      assert.equal(rec.steps.length, 7, `turn ${turn}: steps recorded, each compared below`);
      // generate() never feeds its final token: the next turn feeds it first, then the user's tokens
      let expected = oracleFeed(ref, lastGenerated >= 0 ? [lastGenerated, ...user] : user, sink, window).at(-1)!;
      for (let s = 0; s < rec.steps.length; s++) {
        assert.ok(generatedDiff(rec.steps[s][0], expected) < TOLERANCE, `turn ${turn} step ${s}`);
        if (s + 1 < rec.steps.length) expected = ref.forward([generated[s]])[0];
      }
      transcript = [...transcript, ...user, ...generated];
      lastGenerated = generated.at(-1)!;
    }
  });
});


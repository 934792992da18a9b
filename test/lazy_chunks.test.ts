/**
 * Multi-token forward passes while evicted slots are still in the buffers (masked, awaiting compaction).
 *
 * At the small capacities of the other tests the default compaction interval is 1, so every chunk of a long
 * prompt compacts before it runs and the buffers are exactly [sinks | window] whenever several tokens are fed
 * at once. Here the interval is set explicitly, so chunks of long prompts, multi-token passes and the first
 * pass of each generate() turn run over buffers laid out [sinks | evicted (masked) | window], and compaction
 * fires mid-stream at different phases: before a chunk, before a single step, before a multi-token pass and
 * at the start of a turn. Every returned position is checked against the StreamingLLM oracle.
 *
 * What each pass actually saw is read from the feeds themselves: the decoder session's `run` is wrapped to
 * record the chunk length, the slots in the past buffers and how many of them the attention mask hides. That
 * proves (rather than assumes) that the lazy path ran, independently of the cache's own counters, which are
 * cross-checked against it.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { DynamicCache, LogitsProcessor, LogitsProcessorList, Tensor } from "@huggingface/transformers";
import type { Tensor as OrtTensor } from "onnxruntime-common";
import { AutoModelForCausalLM, sinkCacheStats, type StreamingModel } from "../src/index.js";
import { StreamingReference } from "./support/reference/streaming_reference.js";
import type { TinyVariant } from "./support/fixtures/tiny_models.js";
import { chunkPlan, fixture, ids, logitsAt, maxAbsDiff, tokenStream, type Fixture } from "./support/streaming.js";

const TOLERANCE = 1e-4;

/** The lazily-evicting variants: RoPE with position_ids (llama; gptj interleaved; gpt_neox partial rotary), ALiBi over attended slots, learned. */
const LAZY_VARIANTS = ["llama", "gptj", "gpt_neox", "bloom", "gpt2"] as const satisfies readonly TinyVariant[];

interface Config {
  sink: number;
  window: number;
  interval: number;
}

/** One session run, as its feeds describe it. */
interface PassRecord {
  /** Tokens fed. */
  n: number;
  /** Slots in the past buffers. */
  slots: number;
  /** Past slots the attention mask hides (evicted, awaiting compaction). */
  masked: number;
}

interface Probe {
  passes: PassRecord[];
}

async function load(f: Fixture, { sink, window, interval }: Config): Promise<StreamingModel> {
  const model = await AutoModelForCausalLM.from_pretrained(f.dir, {
    local_files_only: true,
    attention_sink_size: sink,
    attention_sink_window_size: window,
    attention_sink_compaction_interval: interval,
  });
  // The interval must be taken as given (not clamped by the position budget), or there is nothing lazy to test.
  assert.equal(model.attention_sinks.compaction_interval, interval, "the compaction interval was not taken as given");
  assert.equal(model.attention_sinks.capacity, sink + window);
  return model;
}

/** Wraps the decoder session's `run` to record what each pass fed. */
function probe(model: StreamingModel): Probe {
  type Run = (feeds: Record<string, OrtTensor>) => Promise<Record<string, OrtTensor>>;
  const session = (model.sessions as Record<string, { run: Run }>).model;
  const run = session.run.bind(session);
  const passes: PassRecord[] = [];
  session.run = (feeds: Record<string, OrtTensor>) => {
    const inputIds = feeds.input_ids;
    const mask = feeds.attention_mask;
    assert.equal(inputIds.dims[0], 1, "these tests stream one row");
    const n = Number(inputIds.dims[1]);
    const total = Number(mask.dims[1]);
    const data = mask.data as BigInt64Array;
    let masked = 0;
    for (let j = 0; j < total; j++) if (data[j] === 0n) masked++;
    for (let j = total - n; j < total; j++) assert.equal(data[j], 1n, "the new tokens must be attended");
    passes.push({ n, slots: total - n, masked });
    return run(feeds);
  };
  return { passes };
}

/** Masked slots the cache reports, from its byte counters. */
function maskedSlots(cache: DynamicCache): number {
  const stats = sinkCacheStats(cache)!;
  const bytesPerSlot = stats.kv_cache_bytes / stats.cached_tokens;
  return (stats.kv_buffer_bytes - stats.kv_cache_bytes) / bytesPerSlot;
}

/** The cache's counters must agree with what the last pass fed: the masked slots it saw are the ones still there. */
function assertCountersMatchFeeds(cache: DynamicCache, p: Probe, capacity: number): void {
  const last = p.passes.at(-1)!;
  const stats = sinkCacheStats(cache)!;
  assert.equal(maskedSlots(cache), last.masked, "kv_buffer_bytes - kv_cache_bytes disagrees with the mask of the last pass");
  assert.equal(stats.kv_buffer_bytes / (stats.kv_cache_bytes / stats.cached_tokens), last.slots + last.n, "buffer length");
  assert.ok(stats.cached_tokens <= capacity);
}

interface LazySummary {
  /** Multi-token passes that ran while the mask hid evicted slots. */
  lazyMultiToken: number;
  /** Of those, passes whose masked slots were already there before the pass (left by an earlier pass). */
  lazyOverPreviousMasked: number;
  /** Single-token passes that ran while the mask hid evicted slots. */
  lazySingle: number;
  /** Passes before which the buffers shrank although the previous pass had masked slots: compaction of lazily kept slots. */
  compactionsOfMasked: number;
  /** Multi-token passes right after such a compaction (compaction triggered by a chunk). */
  compactionsBeforeMultiToken: number;
  /** Single-token passes right after such a compaction. */
  compactionsBeforeSingle: number;
}

function summarize(passes: readonly PassRecord[], interval: number): LazySummary {
  const summary: LazySummary = {
    lazyMultiToken: 0,
    lazyOverPreviousMasked: 0,
    lazySingle: 0,
    compactionsOfMasked: 0,
    compactionsBeforeMultiToken: 0,
    compactionsBeforeSingle: 0,
  };
  passes.forEach((pass, i) => {
    assert.ok(pass.masked <= interval, `pass ${i} saw ${pass.masked} masked slots, more than the interval ${interval}`);
    const previous = i > 0 ? passes[i - 1] : null;
    const compacted = previous !== null && pass.slots < previous.slots + previous.n;
    if (compacted && previous.masked > 0) {
      summary.compactionsOfMasked++;
      if (pass.n > 1) summary.compactionsBeforeMultiToken++;
      else summary.compactionsBeforeSingle++;
    }
    if (pass.masked > 0) {
      if (pass.n > 1) {
        summary.lazyMultiToken++;
        if (previous !== null && !compacted && previous.masked > 0) summary.lazyOverPreviousMasked++;
      } else {
        summary.lazySingle++;
      }
    }
  });
  return summary;
}

function oracle(f: Fixture, { sink, window }: Config): StreamingReference {
  return new StreamingReference(f.spec, f.weights, { sink_size: sink, window_size: window });
}

/** Feeds `tokens` to the oracle in the library's chunks; returns the logits of every token. */
function oracleFeed(ref: StreamingReference, tokens: readonly number[], { sink, window }: Config): Float32Array[] {
  const out: Float32Array[] = [];
  let at = 0;
  for (const n of chunkPlan(tokens.length, ref.length, sink, window)) {
    out.push(...ref.forward(tokens.slice(at, at + n)));
    at += n;
  }
  assert.equal(at, tokens.length);
  return out;
}

/**
 * Feeds `tokens` as one forward call and compares the logits of every position with the oracle fed the same
 * chunks. Returns how many positions it compared.
 */
async function compareForward(
  model: StreamingModel,
  cache: DynamicCache,
  ref: StreamingReference,
  p: Probe,
  tokens: readonly number[],
  config: Config,
  label: string,
): Promise<number> {
  const plan = chunkPlan(tokens.length, ref.length, config.sink, config.window);
  const before = p.passes.length;
  const out = await model.forward({ input_ids: ids([...tokens]), past_key_values: cache, num_logits_to_keep: 0 });
  assert.deepEqual(
    p.passes.slice(before).map((pass) => pass.n),
    plan,
    `${label}: the library's chunks differ from the documented plan`,
  );
  assert.deepEqual(out.logits.dims, [1, tokens.length, ref.spec.vocab_size]);
  const expected = oracleFeed(ref, tokens, config);
  for (let t = 0; t < tokens.length; t++) {
    const diff = maxAbsDiff(logitsAt(out.logits, 0, t), expected[t]);
    assert.ok(diff < TOLERANCE, `${label}: position ${t} of ${tokens.length} differs from the oracle by ${diff}`);
  }
  assertCountersMatchFeeds(cache, p, config.sink + config.window);
  return tokens.length;
}

describe("chunked prompts over masked slots", () => {
  // Chunks after the first fill are ceil(window / 2) long; with an interval at least that long, chunks run
  // over masked slots (in gptj and bloom also over masked slots left by the previous chunk), and compaction
  // fires before every second (or third) chunk, then before single steps.
  const configs: Record<(typeof LAZY_VARIANTS)[number], Config & { prompt: number; steps: number }> = {
    llama: { sink: 4, window: 24, interval: 13, prompt: 5 * 28 + 3, steps: 30 },
    gptj: { sink: 2, window: 20, interval: 25, prompt: 5 * 22 + 3, steps: 30 },
    gpt_neox: { sink: 3, window: 30, interval: 16, prompt: 4 * 33 + 3, steps: 40 },
    bloom: { sink: 4, window: 24, interval: 30, prompt: 5 * 28 + 3, steps: 40 },
    gpt2: { sink: 2, window: 26, interval: 20, prompt: 5 * 28 + 3, steps: 30 },
  };
  for (const variant of LAZY_VARIANTS) {
    const config = configs[variant];
    it(`${variant}: a prompt ${Math.floor(config.prompt / (config.sink + config.window))}x the cache in one forward, then single steps, equal the oracle`, async () => {
      const f = await fixture(variant);
      const model = await load(f, config);
      const p = probe(model);
      const ref = oracle(f, config);
      const cache = new DynamicCache();
      const stream = tokenStream(config.prompt + config.steps, f.spec.vocab_size, 101 + config.window);
      let compared = await compareForward(model, cache, ref, p, stream.slice(0, config.prompt), config, `${variant} prompt`);
      const prompt = summarize(p.passes, config.interval);
      assert.ok(prompt.lazyMultiToken >= 3, `${variant}: only ${prompt.lazyMultiToken} prompt chunks ran over masked slots`);
      assert.ok(prompt.compactionsBeforeMultiToken >= 2, `${variant}: compaction fired before only ${prompt.compactionsBeforeMultiToken} chunks`);
      if (variant === "gptj" || variant === "bloom") {
        assert.ok(prompt.lazyOverPreviousMasked >= 2, `${variant}: no chunk ran over slots masked by an earlier chunk`);
      }

      let bufferShrank = 0;
      for (let t = config.prompt; t < stream.length; t++) {
        const before = sinkCacheStats(cache)!.kv_buffer_bytes;
        compared += await compareForward(model, cache, ref, p, [stream[t]], config, `${variant} step ${t}`);
        const stats = sinkCacheStats(cache)!;
        if (stats.kv_buffer_bytes < before) bufferShrank++;
        assert.equal(stats.seen_tokens, t + 1);
        assert.equal(stats.cached_tokens, config.sink + config.window);
      }
      assert.equal(compared, stream.length, "every position was compared");
      const all = summarize(p.passes, config.interval);
      assert.ok(all.lazySingle >= config.interval, `${variant}: only ${all.lazySingle} single steps ran over masked slots`);
      assert.ok(all.compactionsBeforeSingle >= 1, `${variant}: compaction never fired before a single step`);
      assert.ok(bufferShrank >= 1, `${variant}: kv_buffer_bytes never went down during the single steps`);
    });
  }
});

describe("multi-token passes over masked slots", () => {
  // After filling the cache exactly, single steps and passes of 2, 3, 7 and window/2 + 1 tokens (the last
  // split into a half-window chunk and one token) alternate so that every multi-token pass starts with masked
  // slots in the buffers; some stay lazy, others trigger compaction.
  const a: Config = { sink: 4, window: 24, interval: 8 };
  const b: Config = { sink: 2, window: 32, interval: 6 };
  const aPasses = [1, 1, 1, 2, 3, 1, 1, 7, 2, 1, 13, 3, 1, 7, 1, 2, 13, 1, 1, 3, 2, 7, 1, 13, 2];
  const bPasses = [1, 1, 1, 2, 3, 1, 1, 7, 1, 2, 1, 17, 3, 1, 1, 1, 1, 7, 1, 2, 17, 1, 1, 3, 2, 1, 7, 1, 17, 2];
  const cases: Record<(typeof LAZY_VARIANTS)[number], [Config, number[]]> = {
    llama: [a, aPasses],
    gptj: [b, bPasses],
    gpt_neox: [a, aPasses],
    bloom: [b, bPasses],
    gpt2: [a, aPasses],
  };
  for (const variant of LAZY_VARIANTS) {
    const [config, passes] = cases[variant];
    it(`${variant}: passes of 2, 3, 7 and window/2+1 tokens with masked slots present equal the oracle`, async () => {
      const f = await fixture(variant);
      const model = await load(f, config);
      const p = probe(model);
      const ref = oracle(f, config);
      const cache = new DynamicCache();
      const capacity = config.sink + config.window;
      const total = capacity + passes.reduce((sum, n) => sum + n, 0);
      const stream = tokenStream(total, f.spec.vocab_size, 202 + config.window);
      let at = 0;
      let compared = await compareForward(model, cache, ref, p, stream.slice(0, capacity), config, `${variant} fill`);
      at = capacity;
      assert.equal(sinkCacheStats(cache)!.cached_tokens, capacity);
      assert.equal(maskedSlots(cache), 0, "filling the cache exactly evicts nothing");

      let multiToken = 0;
      let shrankAtMultiToken = 0;
      const lengths = new Set<number>();
      for (const [i, n] of passes.entries()) {
        const before = sinkCacheStats(cache)!;
        if (n > 1) {
          // The point of this test: several tokens in one forward while evicted slots are still in the buffers.
          assert.ok(
            before.kv_buffer_bytes > before.kv_cache_bytes,
            `${variant}: no masked slots before multi-token pass ${i} (${n} tokens)`,
          );
        }
        compared += await compareForward(model, cache, ref, p, stream.slice(at, at + n), config, `${variant} pass ${i} (${n} tokens)`);
        at += n;
        if (n > 1) {
          multiToken++;
          lengths.add(n);
          if (sinkCacheStats(cache)!.kv_buffer_bytes < before.kv_buffer_bytes) shrankAtMultiToken++;
        }
      }
      assert.equal(at, total);
      assert.equal(compared, total, "every position was compared");
      assert.equal(multiToken, passes.filter((n) => n > 1).length);
      assert.deepEqual([...lengths].sort((x, y) => x - y), [2, 3, 7, Math.ceil(config.window / 2) + 1]);
      const summary = summarize(p.passes, config.interval);
      assert.ok(summary.lazyMultiToken >= 5, `${variant}: only ${summary.lazyMultiToken} multi-token passes ran over masked slots`);
      assert.ok(summary.lazyOverPreviousMasked >= 3, `${variant}: only ${summary.lazyOverPreviousMasked} passes ran over slots masked earlier`);
      assert.ok(summary.compactionsBeforeMultiToken >= 3, `${variant}: compaction fired before only ${summary.compactionsBeforeMultiToken} multi-token passes`);
      assert.ok(summary.compactionsBeforeSingle >= 1, `${variant}: compaction never fired before a single step`);
      assert.ok(shrankAtMultiToken >= 3, `${variant}: kv_buffer_bytes went down at only ${shrankAtMultiToken} multi-token passes`);
    });
  }
});

/** Records the (last-position) logits generate() samples from. */
class LogitsRecorder extends LogitsProcessor {
  readonly steps: Float32Array[] = [];
  override _call(_inputIds: bigint[][], logits: Tensor): Tensor {
    const [, vocab] = logits.dims;
    this.steps.push((logits.data as Float32Array).slice(0, vocab));
    return logits;
  }
}

/** Largest difference, ignoring entries generate() masked to -Infinity (EOS under min_new_tokens). */
function generatedDiff(recorded: Float32Array, expected: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < recorded.length; i++) {
    if (recorded[i] !== -Infinity) worst = Math.max(worst, Math.abs(recorded[i] - expected[i]));
  }
  return worst;
}

/** Greedy choice on the oracle's logits; EOS is excluded, as min_new_tokens excludes it in generate(). */
function greedy(logits: Float32Array, eos: number): number {
  let best = -1;
  for (let v = 0; v < logits.length; v++) {
    if (v !== eos && (best < 0 || logits[v] > logits[best])) best = v;
  }
  return best;
}

describe("multi-turn generate() over masked slots", () => {
  // Turn lengths chosen so masked slots are left between turns; each later turn starts with a multi-token
  // pass ([last token of the previous turn, ...new prompt]) over them, lazily or by compacting first.
  const a: Config & { turns: [number, number][] } = { sink: 2, window: 30, interval: 6, turns: [[70, 9], [3, 8], [6, 12]] };
  const b: Config & { turns: [number, number][] } = { sink: 4, window: 24, interval: 7, turns: [[40, 11], [2, 6], [9, 10]] };
  const cases: Record<(typeof LAZY_VARIANTS)[number], typeof a> = { llama: a, gptj: b, gpt_neox: a, bloom: b, gpt2: a };
  for (const variant of LAZY_VARIANTS) {
    const config = cases[variant];
    it(`${variant}: greedy generation over 3 turns on one DynamicCache equals greedy decoding on the oracle`, async () => {
      const f = await fixture(variant);
      const eos = f.config.eos_token_id as number;
      const model = await load(f, config);
      const p = probe(model);
      const ref = oracle(f, config);
      const cache = new DynamicCache();
      let pending: number | null = null;
      let steps = 0;
      let turnStartsOverMasked = 0;
      let lazyTurnStarts = 0;
      let compactingTurnStarts = 0;
      for (const [turn, [promptLength, newTokens]] of config.turns.entries()) {
        const prompt = tokenStream(promptLength, f.spec.vocab_size, 300 + 17 * turn + config.window);
        if (turn > 0) {
          // Masked slots were left by the previous turn: the turn starts with a multi-token pass over them.
          assert.ok(maskedSlots(cache) > 0, `${variant}: no masked slots between turns ${turn - 1} and ${turn}`);
          turnStartsOverMasked++;
        }
        const list = new LogitsProcessorList();
        const recorder = new LogitsRecorder();
        list.push(recorder);
        const passesBefore = p.passes.length;
        const result = (await model.generate({
          input_ids: ids(prompt),
          past_key_values: cache,
          max_new_tokens: newTokens,
          min_new_tokens: newTokens,
          do_sample: false,
          logits_processor: list,
          return_dict_in_generate: true,
        })) as { sequences: Tensor; past_key_values: DynamicCache };
        assert.equal(result.past_key_values, cache);
        const generated = Array.from(result.sequences.data as BigInt64Array, Number).slice(prompt.length);
        assert.equal(generated.length, newTokens);
        assert.equal(recorder.steps.length, newTokens);

        // The oracle is fed what the library feeds: the prompt (after the previous turn's last, unfed token),
        // then every sampled token but the last.
        const fed: number[] = pending === null ? prompt : [pending, ...prompt];
        const turnPasses = p.passes.slice(passesBefore);
        assert.deepEqual(
          turnPasses.map((pass) => pass.n),
          [...chunkPlan(fed.length, ref.length, config.sink, config.window), ...Array<number>(newTokens - 1).fill(1)],
          `${variant} turn ${turn}: the library's passes differ from what the oracle is fed`,
        );
        if (turn > 0) {
          const [start] = turnPasses;
          const previous = p.passes[passesBefore - 1];
          if (start.n > 1 && start.masked > 0) lazyTurnStarts++;
          if (start.slots < previous.slots + previous.n) compactingTurnStarts++;
        }
        let logits = oracleFeed(ref, fed, config).at(-1)!;
        const expected: number[] = [];
        for (let s = 0; s < newTokens; s++) {
          const diff = generatedDiff(recorder.steps[s], logits);
          assert.ok(diff < TOLERANCE, `${variant} turn ${turn} step ${s}: logits differ from the oracle by ${diff}`);
          expected.push(greedy(logits, eos));
          if (s + 1 < newTokens) logits = ref.forward([expected[s]])[0];
          steps++;
        }
        assert.deepEqual(generated, expected, `${variant} turn ${turn}: generated tokens differ from greedy decoding on the oracle`);
        pending = generated.at(-1)!;
      }
      assert.equal(steps, config.turns.reduce((sum, [, n]) => sum + n, 0), "every generation step was compared");
      assert.equal(turnStartsOverMasked, config.turns.length - 1);
      assert.ok(lazyTurnStarts >= 1, `${variant}: no turn started with a multi-token pass over masked slots`);
      assert.ok(compactingTurnStarts >= 1, `${variant}: no turn started by compacting masked slots`);
      assert.ok(maskedSlots(cache) > 0, `${variant}: no masked slots after the last turn`);
      const summary = summarize(p.passes, config.interval);
      assert.ok(summary.lazySingle >= 2 * config.interval, `${variant}: only ${summary.lazySingle} steps ran over masked slots`);
      assert.ok(summary.compactionsOfMasked >= 3, `${variant}: only ${summary.compactionsOfMasked} compactions of masked slots`);
      assert.ok(summary.compactionsBeforeSingle >= 1, `${variant}: compaction never fired before a generation step`);
    });
  }
});

/**
 * Graphs that can return only the new tokens' keys and values (src/onnx/new_kv_only.ts), so the package writes
 * its cache in place instead of taking the whole cache back every step. To transformers.js they must stay the
 * ordinary decoder; streamed with attention sinks they must give the oracle's logits, in every case the
 * growing cache handles: compaction, chunked prompts, batches, float16 caches, snapshots.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as transformers from "@huggingface/transformers";
import { DynamicCache, Tensor } from "@huggingface/transformers";
import * as ort from "onnxruntime-node";
import { AutoModelForCausalLM, sinkCacheStats, type StreamingModel } from "../src/index.js";
import { buildDecoderOnnx, supportsNewKvOnly } from "../src/onnx/decoder_export.js";
import { NEW_KV_ONLY_OUTPUT, NEW_TOKEN_MASK_VALUE } from "../src/onnx/new_kv_only.js";
import { streamingDecoderOf } from "../src/transformers/enable.js";
import { streamOf } from "../src/transformers/stream_registry.js";
import { tinyDecoderSpec, writeTinyModel, type TinyModel, type TinyVariant } from "./support/fixtures/tiny_models.js";
import { randomDecoderWeights } from "./support/fixtures/random_weights.js";
import { StreamingReference } from "./support/reference/streaming_reference.js";
import { ids, logitsAt, maxAbsDiff, tokenStream } from "./support/streaming.js";

const root = await mkdtemp(join(tmpdir(), "attention-sinks-new-kv-only-"));
after(() => rm(root, { recursive: true, force: true }));

const [SINK, WINDOW, INTERVAL] = [4, 12, 5];
const sinkOptions = { local_files_only: true, attention_sink_size: SINK, attention_sink_window_size: WINDOW, attention_sink_compaction_interval: INTERVAL };

/** The same weights written twice: as exporters write them, and able to return new keys and values only. */
async function twoGraphs(name: string, variant: TinyVariant, options: { kv_dtype?: "fp16"; num_kv_heads?: number } = {}): Promise<{ whole: string; newOnly: string; model: TinyModel }> {
  const whole = join(root, `${name}-whole`);
  const newOnly = join(root, `${name}-new-only`);
  await writeTinyModel(whole, variant, { seed: 11, ...options });
  const model = await writeTinyModel(newOnly, variant, { seed: 11, ...options, new_kv_only: true });
  return { whole, newOnly, model };
}

const load = (dir: string) => AutoModelForCausalLM.from_pretrained(dir, sinkOptions) as Promise<StreamingModel>;

/** Feeds `chunks` of `tokens` in turn and returns the logits of every fed token, row by row. */
async function streamLogits(model: StreamingModel, rows: number[][], chunks: number[], cache = new DynamicCache()): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  let at = 0;
  for (const n of chunks) {
    const batch = rows.map((row) => row.slice(at, at + n));
    const logits = (await model.forward({ input_ids: ids(batch.flat(), rows.length), past_key_values: cache })).logits;
    for (let b = 0; b < rows.length; b++) for (let t = 0; t < n; t++) out.push(logitsAt(logits, b, t));
    at += n;
  }
  return out;
}

describe("graphs that return only the new keys and values", () => {
  it("are the ordinary decoder to transformers.js: same logits and presents as the exporters' graph", async () => {
    const { whole, newOnly } = await twoGraphs("plain", "llama");
    const plain = await transformers.AutoModelForCausalLM.from_pretrained(whole, { local_files_only: true });
    const other = await transformers.AutoModelForCausalLM.from_pretrained(newOnly, { local_files_only: true });
    const prompt = tokenStream(9, 64, 2);
    const a = await plain.generate({ input_ids: ids(prompt), max_new_tokens: 12, do_sample: false });
    const b = await other.generate({ input_ids: ids(prompt), max_new_tokens: 12, do_sample: false });
    assert.deepEqual(Array.from((b as Tensor).data as BigInt64Array), Array.from((a as Tensor).data as BigInt64Array));
    const feeds = { input_ids: ids(prompt), attention_mask: ids(prompt.map(() => 1)) };
    const x = (await plain(feeds)) as Record<string, Tensor>;
    const y = (await other(feeds)) as Record<string, Tensor>;
    assert.ok(maxAbsDiff(x.logits.data as Float32Array, y.logits.data as Float32Array) <= 1e-5);
    assert.deepEqual(y["present.1.key"].dims, x["present.1.key"].dims);
    assert.ok(maxAbsDiff(x["present.1.value"].data as Float32Array, y["present.1.value"].data as Float32Array) <= 1e-6);
  });

  it("return the new tokens alone when the mask marks them, reading the past as given", async () => {
    const spec = tinyDecoderSpec("llama");
    const bytes = buildDecoderOnnx(spec, randomDecoderWeights(spec, 3), { new_kv_only: true });
    const session = await ort.InferenceSession.create(bytes);
    assert.ok(session.outputNames.includes(NEW_KV_ONLY_OUTPUT));
    const { num_kv_heads, head_dim, num_layers } = spec;
    const past = 6;
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor("int64", BigInt64Array.of(5n, 9n), [1, 2]),
      position_ids: new ort.Tensor("int64", BigInt64Array.of(6n, 7n), [1, 2]),
    };
    for (let i = 0; i < num_layers; i++) {
      for (const kind of ["key", "value"]) {
        const data = Float32Array.from({ length: num_kv_heads * past * head_dim }, (_, j) => Math.sin(j + i));
        feeds[`past_key_values.${i}.${kind}`] = new ort.Tensor("float32", data, [1, num_kv_heads, past, head_dim]);
      }
    }
    const run = (newTokens: number) => session.run({ ...feeds, attention_mask: new ort.Tensor("int64", BigInt64Array.of(1n, 0n, 1n, 1n, 1n, 1n, BigInt(newTokens), BigInt(newTokens)), [1, 8]) });
    const whole = await run(1);
    const newOnly = await run(NEW_TOKEN_MASK_VALUE);
    assert.deepEqual(whole["present.0.key"].dims, [1, num_kv_heads, past + 2, head_dim]);
    assert.deepEqual(newOnly["present.0.key"].dims, [1, num_kv_heads, 2, head_dim]);
    assert.ok(maxAbsDiff(whole.logits.data as Float32Array, newOnly.logits.data as Float32Array) <= 1e-6);
    // The new rows are the last rows of the whole present, head by head.
    const rows = whole["present.1.key"].data as Float32Array;
    const fresh = newOnly["present.1.key"].data as Float32Array;
    for (let h = 0; h < num_kv_heads; h++) {
      const tail = rows.subarray((h * (past + 2) + past) * head_dim, (h + 1) * (past + 2) * head_dim);
      assert.deepEqual(Array.from(fresh.subarray(h * 2 * head_dim, (h + 1) * 2 * head_dim)), Array.from(tail));
    }
  });

  it("are not written where positions would come from slot indices", () => {
    for (const variant of ["bloom", "mpt"] as TinyVariant[]) {
      const spec = tinyDecoderSpec(variant);
      assert.equal(supportsNewKvOnly(spec), false, variant);
      assert.throws(() => buildDecoderOnnx(spec, randomDecoderWeights(spec, 1), { new_kv_only: true }), /new_kv_only needs/);
    }
    assert.equal(supportsNewKvOnly(tinyDecoderSpec("llama"), { position_ids: false }), false);
    assert.equal(supportsNewKvOnly(tinyDecoderSpec("llama")), true);
  });

  for (const variant of ["llama", "gptj", "gpt_neox", "gpt2"] as TinyVariant[]) {
    it(`${variant}: streamed in fixed buffers, the oracle's logits over four caches' worth, buffers never growing`, async () => {
      const { newOnly, model: f } = await twoGraphs(`oracle-${variant}`, variant);
      const model = await load(newOnly);
      const oracle = new StreamingReference(f.spec, f.weights, { sink_size: SINK, window_size: WINDOW });
      const tokens = tokenStream(4 * (SINK + WINDOW) + 3, f.spec.vocab_size, 5);
      const cache = new DynamicCache();
      let buffer: number | undefined;
      // A prompt, then single tokens and a chunk that evicts several at once.
      const chunks = [7, ...Array.from({ length: 30 }, () => 1), 6, ...Array.from({ length: tokens.length - 43 }, () => 1)];
      let at = 0;
      for (const n of chunks) {
        const chunk = tokens.slice(at, at + n);
        const logits = (await model.forward({ input_ids: ids(chunk), past_key_values: cache })).logits;
        const expected = oracle.forward(chunk);
        for (let t = 0; t < n; t++) {
          const diff = maxAbsDiff(logitsAt(logits, 0, t), expected[t]);
          assert.ok(diff < 1e-4, `token ${at + t} differs from the oracle by ${diff}`);
        }
        const stats = sinkCacheStats(cache)!;
        buffer ??= stats.kv_buffer_bytes;
        assert.equal(stats.kv_buffer_bytes, buffer, "the buffers keep their size");
        assert.ok(stats.cached_tokens <= SINK + WINDOW);
        at += n;
      }
      assert.equal(at, tokens.length);
      assert.equal(streamOf(cache)!.slots.layout.new_kv_only, true);
    });
  }

  it("float16 caches, grouped KV heads and a batch of two: the exporters' graph streamed the growing way", async () => {
    for (const options of [{ num_kv_heads: 2 }, { kv_dtype: "fp16" as const }]) {
      const { whole, newOnly } = await twoGraphs(`batch-${options.kv_dtype ?? options.num_kv_heads}`, "llama", options);
      const rows = [tokenStream(70, 64, 8), tokenStream(70, 64, 9)];
      const chunks = [20, 3, ...Array.from({ length: 47 }, () => 1)];
      const expected = await streamLogits(await load(whole), rows, chunks);
      const got = await streamLogits(await load(newOnly), rows, chunks);
      const worst = Math.max(...got.map((logits, i) => maxAbsDiff(logits, expected[i])));
      // Summation order differs (scores and values are split at the past), by ~1e-6; in a float16 cache that
      // now and then rounds a new key to the neighbouring float16, which later logits feel by up to ~1e-4.
      const tolerance = options.kv_dtype === "fp16" ? 1e-3 : 1e-5;
      assert.ok(worst <= tolerance, `${JSON.stringify(options)}: logits differ by ${worst}`);
    }
  });

  it("a prompt longer than the cache is fed in chunks, as the growing cache feeds it", async () => {
    const { whole, newOnly } = await twoGraphs("long-prompt", "gpt_neox");
    const prompt = [tokenStream(3 * (SINK + WINDOW) + 2, 64, 4)];
    const [expected, got] = [await streamLogits(await load(whole), prompt, [prompt[0].length]), await streamLogits(await load(newOnly), prompt, [prompt[0].length])];
    assert.equal(got.length, prompt[0].length);
    assert.ok(Math.max(...got.map((logits, i) => maxAbsDiff(logits, expected[i]))) <= 1e-5);
  });

  it("snapshots move between fixed and growing buffers: a stream saved in one continues in the other", async () => {
    const { whole, newOnly } = await twoGraphs("snapshot", "llama");
    const [a, b] = [await load(newOnly), await load(whole)];
    const tokens = tokenStream(60, 64, 6);
    for (const [from, to] of [[a, b], [b, a]]) {
      const cache = new DynamicCache();
      await streamLogits(from, [tokens.slice(0, 37)], [20, ...Array.from({ length: 17 }, () => 1)], cache);
      const restored = streamingDecoderOf(to).load(streamingDecoderOf(from).save(cache));
      const continued = await streamLogits(from, [tokens.slice(37)], Array.from({ length: 23 }, () => 1), cache);
      const resumed = await streamLogits(to, [tokens.slice(37)], Array.from({ length: 23 }, () => 1), restored);
      assert.ok(Math.max(...resumed.map((logits, i) => maxAbsDiff(logits, continued[i]))) <= 1e-5);
    }
  });
});

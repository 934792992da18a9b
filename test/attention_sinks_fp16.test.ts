/**
 * Models whose KV cache is float16 (as fp16 ONNX exports keep it): the cache moves keys in float32 and rounds
 * them once. Checked against plain transformers.js before the cache fills, and against the oracle after.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as transformers from "@huggingface/transformers";
import { DynamicCache, Tensor } from "@huggingface/transformers";
import { AutoModelForCausalLM, sinkCacheStats } from "../src/index.js";
import { writeTinyModel, type TinyVariant } from "./support/fixtures/tiny_models.js";
import { StreamingReference } from "./support/reference/streaming_reference.js";
import { ids, logitsAt, maxAbsDiff, tokenStream } from "./support/streaming.js";

/** float16 keys and values are rounded to 11 significant bits: logits move by a few 1e-3 at most here. */
const FP16_TOLERANCE = 1e-2;

const root = await mkdtemp(join(tmpdir(), "attention-sinks-fp16-"));
after(() => rm(root, { recursive: true, force: true }));

describe("float16 KV caches", () => {
  for (const variant of ["llama", "gptj", "bloom", "gpt2"] as TinyVariant[]) {
    it(`${variant}: equal to plain transformers.js before the cache fills, to the oracle after`, async () => {
      const dir = join(root, variant);
      const f = await writeTinyModel(dir, variant, { seed: 7, kv_dtype: "fp16" });
      const [sink, window] = [4, 12];
      const model = await AutoModelForCausalLM.from_pretrained(dir, {
        local_files_only: true, attention_sink_size: sink, attention_sink_window_size: window, attention_sink_compaction_interval: 5,
      });
      const plain = await transformers.AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true });
      const stream = tokenStream(70, f.spec.vocab_size, 3);

      const prompt = stream.slice(0, 10);
      const cache = new DynamicCache();
      const out = await model.forward({ input_ids: ids(prompt), past_key_values: cache });
      const reference = (await plain({ input_ids: ids(prompt), attention_mask: ids(prompt.map(() => 1)) })) as { logits: Tensor };
      assert.ok(maxAbsDiff(out.logits.data as Float32Array, reference.logits.data as Float32Array) <= 1e-5);

      const oracle = new StreamingReference(f.spec, f.weights, { sink_size: sink, window_size: window });
      const shorter = new StreamingReference(f.spec, f.weights, { sink_size: sink, window_size: window - 1 });
      oracle.forward(prompt);
      shorter.forward(prompt);
      let compared = 0;
      let told = 0;
      for (const [t, token] of stream.slice(prompt.length).entries()) {
        const logits = logitsAt((await model.forward({ input_ids: ids([token]), past_key_values: cache })).logits, 0, 0);
        const diff = maxAbsDiff(logits, oracle.forward([token])[0]);
        assert.ok(diff < FP16_TOLERANCE, `token ${prompt.length + t} differs from the oracle by ${diff}`);
        compared++;
        const wrong = maxAbsDiff(logits, shorter.forward([token])[0]);
        if (prompt.length + t > sink + window) {
          assert.ok(wrong > 10 * FP16_TOLERANCE, "the tolerance still tells a one-token error apart");
          told++;
        }
      }
      assert.equal(compared, stream.length - prompt.length, "every streamed token was compared with the oracle");
      assert.equal(told, stream.length - (sink + window) - 1, "every token past the cache was told apart from a one-token error");
      const stats = sinkCacheStats(cache)!;
      assert.equal(stats.cached_tokens, sink + window);
      assert.equal(stats.kv_cache_bytes, (sink + window) * 2 * f.spec.num_layers * f.spec.num_kv_heads * f.spec.head_dim * 2);
    });
  }
});

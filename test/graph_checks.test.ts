/**
 * What a loaded graph says, held against how it will stream: RoPE tables baked into it (cos_cache / sin_cache,
 * as onnxruntime-genai's builder writes them) against config.json, refusing a config that disagrees by naming
 * the value; and GroupQueryAttention, which reads no mask, against lazy eviction.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DynamicCache } from "@huggingface/transformers";
import { AutoModelForCausalLM, sinkCacheStats } from "../src/index.js";
import { StreamingReference } from "./support/reference/streaming_reference.js";
import { ids, logitsAt, maxAbsDiff, tokenStream } from "./support/streaming.js";
import { writeTinyModel, type TinyModelOptions, type TinyVariant } from "./support/fixtures/tiny_models.js";

const root = await mkdtemp(join(tmpdir(), "attention-sinks-rotary-tables-"));
after(() => rm(root, { recursive: true, force: true }));
let made = 0;

/** A genai-style fixture whose config.json is then edited by `edit`. */
async function fixture(variant: TinyVariant, options: TinyModelOptions, edit: (config: Record<string, unknown>) => void = () => {}): Promise<string> {
  const dir = join(root, String(++made));
  await writeTinyModel(dir, variant, { fused_norms: true, attention: "MultiHeadAttention", ...options });
  const config = JSON.parse(await readFile(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
  edit(config);
  await writeFile(join(dir, "config.json"), JSON.stringify(config));
  return dir;
}

const load = (dir: string, window = 12) =>
  AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true, attention_sink_size: 4, attention_sink_window_size: window });

describe("RoPE tables baked into the graph", () => {
  it("agree with the config they were built from, inline or in external data, float32 or float16", async () => {
    for (const options of [{ num_kv_heads: 4 }, { num_kv_heads: 4, external_data_threshold_bytes: 0 }, { num_kv_heads: 4, kv_dtype: "fp16" as const }]) {
      const model = await load(await fixture("llama", options));
      assert.equal(model.attention_sinks.capacity, 16);
    }
  });

  it("refuse a config whose rope_theta gives other angles, naming it", async () => {
    for (const external_data_threshold_bytes of [undefined, 0]) {
      const dir = await fixture("llama", { num_kv_heads: 4, external_data_threshold_bytes }, (config) => (config.rope_theta = 500000));
      await assert.rejects(load(dir), /bakes RoPE tables \(cos_cache, sin_cache\) that disagree with config\.json: at position 1, pair 1 turns by 0\.1000 radians, but config\.json's rope_theta 500000 gives 0\.03761/);
    }
  });

  it("refuse a config whose rotary dimensions differ", async () => {
    const dir = await fixture("gpt_neox", {}, (config) => (config.rotary_pct = 1));
    await assert.rejects(load(dir), /they hold \[64,2\] values, but config\.json gives 4 rotating pairs per head \(head_dim 8, rotary dimensions 8\)/);
  });

  it("refuse a cache that would rotate past the tables' last position", async () => {
    const dir = await fixture("llama", { num_kv_heads: 4, rotary_table_length: 16 });
    await assert.rejects(load(dir, 24), /they cover positions 0\.\.15, but this cache uses positions up to \d+ \(attention_sink_size \+ attention_sink_window_size \+ attention_sink_compaction_interval\): give a smaller window/);
  });
});

describe("GroupQueryAttention graphs that declare position_ids", () => {
  it("are refused with lazy eviction, and stream exactly compacting on every eviction", async () => {
    const dir = join(root, "gqa-position-ids");
    const f = await writeTinyModel(dir, "llama", { fused_norms: true, attention: "GroupQueryAttention", num_heads: 2 });
    await assert.rejects(load(dir), /computes attention with GroupQueryAttention, which attends to every cache slot up to seqlens_k whatever the attention mask says, so evicted slots cannot wait masked: load it with attention_sink_compaction_interval: 0/);
    const model = await AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true, attention_sink_size: 4, attention_sink_window_size: 12, attention_sink_compaction_interval: 0 });
    const oracle = new StreamingReference(f.spec, f.weights, { sink_size: 4, window_size: 12 });
    const cache = new DynamicCache();
    for (const token of tokenStream(48, f.spec.vocab_size, 5)) {
      const logits = logitsAt((await model.forward({ input_ids: ids([token]), past_key_values: cache })).logits, 0, 0);
      assert.ok(maxAbsDiff(logits, oracle.forward([token])[0]) < 1e-4);
    }
    assert.equal(sinkCacheStats(cache)!.cached_tokens, 16);
  });
});

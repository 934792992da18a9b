/**
 * The ONNX export styles users download, built by the package's graph builder in the style of the exporter
 * that makes them, each held to its reference: greedy generate() equal to plain transformers.js token for
 * token before the cache fills, the StreamingLLM oracle while streaming 4x the cache after, and the cache
 * bounded. One table of styles, one loop; each prints the largest difference it measured.
 *
 * GroupQueryAttention reads no mask: it attends to the first seqlens_k + 1 slots and rotates at slot
 * positions, so masked (lazily evicted) slots would be attended. Its graphs take no position_ids, which makes
 * the cache compact on every eviction: the buffers stay contiguous and every slot is attended.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as transformers from "@huggingface/transformers";
import { DynamicCache, Tensor } from "@huggingface/transformers";
import { AutoModelForCausalLM, sinkCacheStats } from "../src/index.js";
import { float16ToFloat32Table } from "../src/onnx/float16.js";
import { writeTinyModel, type TinyModelOptions, type TinyVariant } from "./support/fixtures/tiny_models.js";
import { StreamingReference } from "./support/reference/streaming_reference.js";
import { ids, maxAbsDiff, tokenStream } from "./support/streaming.js";

interface ExportStyle {
  name: string;
  variant: TinyVariant;
  options: TinyModelOptions;
  /** The largest logit difference from the oracle allowed while streaming. */
  tolerance: number;
  /** Whether evicted slots wait masked (false: the cache compacts on every eviction). */
  lazy_eviction: boolean;
}

/** float32 through and through: only summation order differs from the float64 oracle. */
const FP32_TOLERANCE = 1e-4;
/** A float16 cache or float16 logits round to 11 significant bits: logits here move by a few 1e-3 at most. */
const FP16_TOLERANCE = 1e-2;
/** Attention itself in float16 (GroupQueryAttention on a float16 cache): 1.2e-2 measured. */
const FP16_ATTENTION_TOLERANCE = 2e-2;

const optimum = { num_logits_to_keep: true } as const;
/** onnxruntime-genai's model builder: fused norms, float logits for every position, no num_logits_to_keep. */
const genai = { fused_norms: true } as const;

export const EXPORT_STYLES: readonly ExportStyle[] = [
  { name: "Optimum fp32: num_logits_to_keep, position_ids", variant: "llama", options: optimum, tolerance: FP32_TOLERANCE, lazy_eviction: true },
  { name: "Optimum fp16: float16 weights, cache and logits", variant: "llama", options: { ...optimum, dtype: "fp16", kv_dtype: "fp16", logits_dtype: "fp16" }, tolerance: FP16_TOLERANCE, lazy_eviction: true },
  { name: "float16 logits for every position, no num_logits_to_keep", variant: "llama", options: { logits_dtype: "fp16" }, tolerance: FP16_TOLERANCE, lazy_eviction: true },
  { name: "no position_ids: RoPE at slot indices", variant: "llama", options: { ...optimum, position_ids: false }, tolerance: FP32_TOLERANCE, lazy_eviction: false },
  { name: "no position_ids, partial rotary, fp16 cache", variant: "gpt_neox", options: { position_ids: false, kv_dtype: "fp16" }, tolerance: FP16_TOLERANCE, lazy_eviction: false },
  { name: "merged decoder with use_cache_branch", variant: "llama", options: { ...optimum, use_cache_branch: true }, tolerance: FP32_TOLERANCE, lazy_eviction: true },
  { name: "merged decoder, fp16 cache and logits", variant: "gptj", options: { use_cache_branch: true, kv_dtype: "fp16", logits_dtype: "fp16" }, tolerance: FP16_TOLERANCE, lazy_eviction: true },
  { name: "genai: RotaryEmbedding + MultiHeadAttention with a mask bias, SkipSimplifiedLayerNormalization", variant: "llama", options: { ...genai, attention: "MultiHeadAttention", num_kv_heads: 4 }, tolerance: FP32_TOLERANCE, lazy_eviction: true },
  { name: "genai fp16: MultiHeadAttention in float16, float16 logits", variant: "llama", options: { ...genai, attention: "MultiHeadAttention", num_kv_heads: 4, dtype: "fp16", kv_dtype: "fp16", logits_dtype: "fp16" }, tolerance: FP16_TOLERANCE, lazy_eviction: true },
  { name: "genai: interleaved partial RotaryEmbedding, SkipLayerNormalization", variant: "gptj", options: { ...genai, attention: "MultiHeadAttention" }, tolerance: FP32_TOLERANCE, lazy_eviction: true },
  { name: "genai: GroupQueryAttention, rotary inside, no position_ids", variant: "llama", options: { ...genai, attention: "GroupQueryAttention", position_ids: false, num_heads: 2 }, tolerance: FP32_TOLERANCE, lazy_eviction: false },
  { name: "genai fp16: GroupQueryAttention in float16", variant: "llama", options: { ...genai, attention: "GroupQueryAttention", position_ids: false, num_heads: 2, dtype: "fp16", kv_dtype: "fp16", logits_dtype: "fp16" }, tolerance: FP16_ATTENTION_TOLERANCE, lazy_eviction: false },
];

const HALF = float16ToFloat32Table();

/** The logits of batch row 0, token `token`, as float32 whatever the graph returns. */
function logitsRow(logits: Tensor, token: number): Float32Array {
  const [, length, vocab] = logits.dims;
  assert.ok(token < length);
  const start = token * vocab;
  if (logits.type === "float32") return (logits.data as Float32Array).slice(start, start + vocab);
  assert.equal(logits.type, "float16");
  return Float32Array.from((logits.data as Uint16Array).subarray(start, start + vocab), (bits) => HALF[bits]);
}

const root = await mkdtemp(join(tmpdir(), "attention-sinks-export-styles-"));
after(() => rm(root, { recursive: true, force: true }));

describe("export styles stream exactly", () => {
  for (const [index, style] of EXPORT_STYLES.entries()) {
    it(style.name, async (context) => {
      const dir = join(root, String(index));
      const f = await writeTinyModel(dir, style.variant, { seed: 11, ...style.options });
      const vocab = f.spec.vocab_size;
      const plain = await transformers.AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true });

      // The graph is of the style it claims.
      const session = plain.sessions.model as unknown as { inputNames: string[]; run(feeds: Record<string, unknown>): Promise<Record<string, { dims: number[] }>> };
      const takesPositions = style.options.position_ids ?? true;
      assert.equal(session.inputNames.includes("position_ids"), takesPositions);
      assert.equal(session.inputNames.includes("num_logits_to_keep"), style.options.num_logits_to_keep ?? false);
      assert.equal(session.inputNames.includes("use_cache_branch"), style.options.use_cache_branch ?? false);

      // Before the cache fills: greedy generate() picks plain transformers.js's tokens.
      const roomy = { local_files_only: true, attention_sink_size: 4, attention_sink_window_size: 56 } as const;
      const prompt = tokenStream(6, vocab, 9);
      const generate = async (m: transformers.PreTrainedModel) =>
        Array.from(((await m.generate({ input_ids: ids(prompt), max_new_tokens: 24, min_new_tokens: 24, do_sample: false })) as Tensor).data as BigInt64Array, Number).slice(prompt.length);
      const expected = await generate(plain);
      assert.ok(new Set(expected).size > 3, `the fixture generates varied tokens: ${expected}`);
      assert.deepEqual(await generate(await AutoModelForCausalLM.from_pretrained(dir, roomy)), expected);

      // After: 4x the cache against the oracle, prompt chunked, then token by token.
      const [sink, window] = [4, 12];
      const capacity = sink + window;
      const model = await AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true, attention_sink_size: sink, attention_sink_window_size: window, attention_sink_compaction_interval: 5 });
      assert.equal(model.attention_sinks.compaction_interval, style.lazy_eviction ? 5 : 0);
      const oracle = new StreamingReference(f.spec, f.weights, { sink_size: sink, window_size: window });
      const shorter = new StreamingReference(f.spec, f.weights, { sink_size: sink, window_size: window - 1 });
      const stream = tokenStream(4 * capacity, vocab, 3);
      const cache = new DynamicCache();
      const first = stream.slice(0, 10);
      let worst = 0;
      const prefill = await model.forward({ input_ids: ids(first), past_key_values: cache });
      const prefillReference = oracle.forward(first);
      shorter.forward(first);
      for (let t = 0; t < first.length; t++) {
        const diff = maxAbsDiff(logitsRow(prefill.logits, t), prefillReference[t]);
        worst = Math.max(worst, diff);
        assert.ok(diff < style.tolerance, `prompt token ${t} differs from the oracle by ${diff}`);
      }
      let told = 0;
      let nearestWrong = Infinity;
      for (const [t, token] of stream.slice(first.length).entries()) {
        const logits = logitsRow((await model.forward({ input_ids: ids([token]), past_key_values: cache })).logits, 0);
        const diff = maxAbsDiff(logits, oracle.forward([token])[0]);
        worst = Math.max(worst, diff);
        assert.ok(diff < style.tolerance, `token ${first.length + t} differs from the oracle by ${diff}`);
        const wrong = maxAbsDiff(logits, shorter.forward([token])[0]);
        if (first.length + t > capacity) {
          nearestWrong = Math.min(nearestWrong, wrong);
          assert.ok(wrong > 10 * style.tolerance, `token ${first.length + t}: the tolerance tells a one-token error apart (${wrong})`);
          told++;
        }
      }
      context.diagnostic(`largest difference from the oracle ${worst.toExponential(2)} (tolerance ${style.tolerance}); smallest one-token error ${nearestWrong.toExponential(2)}`);
      assert.equal(told, stream.length - capacity - 1, "every token past the cache was told apart from a one-token error");
      const stats = sinkCacheStats(cache)!;
      assert.equal(stats.seen_tokens, stream.length);
      assert.equal(stats.cached_tokens, capacity);
      const bytesPerValue = style.options.kv_dtype === "fp16" ? 2 : 4;
      const bytesPerSlot = 2 * f.spec.num_layers * f.spec.num_kv_heads * f.spec.head_dim * bytesPerValue;
      assert.equal(stats.kv_cache_bytes, capacity * bytesPerSlot);
      assert.ok(stats.kv_buffer_bytes <= (capacity + model.attention_sinks.compaction_interval) * bytesPerSlot, "the buffers stay bounded");
    });
  }
});

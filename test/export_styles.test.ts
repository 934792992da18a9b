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
import { quantizedWeights } from "./support/reference/quantized_weights.js";
import { StreamingReference } from "./support/reference/streaming_reference.js";
import { ids, maxAbsDiff, tokenStream } from "./support/streaming.js";

interface ExportStyle {
  name: string;
  variant: TinyVariant;
  options: TinyModelOptions;
  /** The largest logit difference from the reference allowed while streaming. */
  tolerance: number;
  /**
   * The oracle (default), or, where the oracle cannot model the graph's arithmetic, the same graph streamed
   * with compaction on every eviction; the oracle then bounds the difference by `oracle_bound`.
   */
  reference?: { kind: "eager compaction"; oracle_bound: number };
  /** Whether evicted slots wait masked (false: the cache compacts on every eviction). */
  lazy_eviction: boolean;
}

/** float32 through and through: only summation order differs from the float64 oracle. */
const FP32_TOLERANCE = 1e-4;
/** A float16 cache or float16 logits round to 11 significant bits: logits here move by a few 1e-3 at most. */
const FP16_TOLERANCE = 1e-2;
/** Attention itself in float16 (the contrib ops on a float16 cache run in float16): 1.2e-2 measured. */
const FP16_ATTENTION_TOLERANCE = 2e-2;
/**
 * q8 quantizes each linear layer's input to 8 bits on the fly, one scale per forward pass, which the oracle
 * does not model: lazy eviction is held to eager compaction, and the oracle bounds both.
 */
const q8Reference = { kind: "eager compaction", oracle_bound: 0.2 } as const;

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
  { name: "genai fp16: MultiHeadAttention in float16, float16 logits", variant: "llama", options: { ...genai, attention: "MultiHeadAttention", num_kv_heads: 4, dtype: "fp16", kv_dtype: "fp16", logits_dtype: "fp16" }, tolerance: FP16_ATTENTION_TOLERANCE, lazy_eviction: true },
  { name: "genai: interleaved partial RotaryEmbedding, SkipLayerNormalization", variant: "gptj", options: { ...genai, attention: "MultiHeadAttention" }, tolerance: FP32_TOLERANCE, lazy_eviction: true },
  { name: "genai: GroupQueryAttention, rotary inside, no position_ids", variant: "llama", options: { ...genai, attention: "GroupQueryAttention", position_ids: false, num_heads: 2 }, tolerance: FP32_TOLERANCE, lazy_eviction: false },
  { name: "genai fp16: GroupQueryAttention in float16", variant: "llama", options: { ...genai, attention: "GroupQueryAttention", position_ids: false, num_heads: 2, dtype: "fp16", kv_dtype: "fp16", logits_dtype: "fp16" }, tolerance: FP16_ATTENTION_TOLERANCE, lazy_eviction: false },
  { name: "Optimum q8: MatMulInteger on dynamically quantized inputs", variant: "llama", options: { ...optimum, dtype: "q8" }, tolerance: FP32_TOLERANCE, reference: q8Reference, lazy_eviction: true },
  { name: "q8, partial rotary, float16 logits", variant: "gpt_neox", options: { dtype: "q8", logits_dtype: "fp16" }, tolerance: FP16_TOLERANCE, reference: q8Reference, lazy_eviction: true },
  { name: "q4: MatMulNBits", variant: "llama", options: { ...optimum, dtype: "q4" }, tolerance: FP32_TOLERANCE, lazy_eviction: true },
  { name: "q4f16: MatMulNBits in float16, fp16 cache and logits", variant: "llama", options: { ...optimum, dtype: "q4f16", kv_dtype: "fp16", logits_dtype: "fp16" }, tolerance: FP16_TOLERANCE, lazy_eviction: true },
  { name: "genai q4: MatMulNBits + GroupQueryAttention", variant: "llama", options: { ...genai, attention: "GroupQueryAttention", position_ids: false, num_heads: 2, dtype: "q4" }, tolerance: FP32_TOLERANCE, lazy_eviction: false },
  { name: "genai q4f16: MatMulNBits + MultiHeadAttention in float16", variant: "llama", options: { ...genai, attention: "MultiHeadAttention", num_kv_heads: 4, dtype: "q4f16", kv_dtype: "fp16", logits_dtype: "fp16" }, tolerance: FP16_ATTENTION_TOLERANCE, lazy_eviction: true },
];

/** What a stream is compared with: logits for each token fed, one forward pass per call. */
interface Reference {
  forward(tokens: number[]): Float32Array[] | Promise<Float32Array[]>;
}

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

      // After: 4x the cache against the reference, prompt chunked, then token by token.
      const [sink, window] = [4, 12];
      const capacity = sink + window;
      const load = (windowSize: number, compaction: number) =>
        AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true, attention_sink_size: sink, attention_sink_window_size: windowSize, attention_sink_compaction_interval: compaction });
      const model = await load(window, 5);
      assert.equal(model.attention_sinks.compaction_interval, style.lazy_eviction ? 5 : 0);
      // Quantized exports compute with their rounded weights: so does the oracle.
      const dtype = style.options.dtype;
      const weights = dtype === "q8" || dtype === "q4" || dtype === "q4f16" ? quantizedWeights(f.weights, dtype) : f.weights;
      const oracle = new StreamingReference(f.spec, weights, { sink_size: sink, window_size: window });
      const eager = async (windowSize: number): Promise<Reference> => {
        const eagerModel = await load(windowSize, 0);
        const eagerCache = new DynamicCache();
        return {
          async forward(tokens) {
            const out = await eagerModel.forward({ input_ids: ids(tokens), past_key_values: eagerCache });
            return tokens.map((_, t) => logitsRow(out.logits, t));
          },
        };
      };
      const byOracle = style.reference === undefined;
      const reference: Reference = byOracle ? oracle : await eager(window);
      const shorter: Reference = byOracle ? new StreamingReference(f.spec, weights, { sink_size: sink, window_size: window - 1 }) : await eager(window - 1);
      const stream = tokenStream(4 * capacity, vocab, 3);
      const cache = new DynamicCache();
      let [worst, worstFromOracle] = [0, 0];
      const compare = async (tokens: number[]): Promise<Float32Array[]> => {
        const out = await model.forward({ input_ids: ids(tokens), past_key_values: cache });
        const [expected, fromOracle] = [await reference.forward(tokens), byOracle ? null : oracle.forward(tokens)];
        return tokens.map((_, t) => {
          const logits = logitsRow(out.logits, t);
          const diff = maxAbsDiff(logits, expected[t]);
          worst = Math.max(worst, diff);
          assert.ok(diff < style.tolerance, `token ${sinkCacheStats(cache)!.seen_tokens - tokens.length + t} differs from the reference by ${diff}`);
          if (fromOracle) worstFromOracle = Math.max(worstFromOracle, maxAbsDiff(logits, fromOracle[t]));
          return logits;
        });
      };
      const first = stream.slice(0, 10);
      await compare(first);
      await shorter.forward(first);
      let told = 0;
      let nearestWrong = Infinity;
      for (const [t, token] of stream.slice(first.length).entries()) {
        const [logits] = await compare([token]);
        const wrong = maxAbsDiff(logits, (await shorter.forward([token]))[0]);
        if (first.length + t > capacity) {
          nearestWrong = Math.min(nearestWrong, wrong);
          assert.ok(wrong > 10 * style.tolerance, `token ${first.length + t}: the tolerance tells a one-token error apart (${wrong})`);
          told++;
        }
      }
      const bound = style.reference ? `; from the oracle ${worstFromOracle.toExponential(2)} (bound ${style.reference.oracle_bound})` : "";
      context.diagnostic(`largest difference from the reference ${worst.toExponential(2)} (tolerance ${style.tolerance}); smallest one-token error ${nearestWrong.toExponential(2)}${bound}`);
      if (style.reference) assert.ok(worstFromOracle < style.reference.oracle_bound, `the oracle bounds the quantized stream (${worstFromOracle})`);
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

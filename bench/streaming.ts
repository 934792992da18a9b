/**
 * Speed and memory of the sink cache against plain transformers.js, on one model in one process.
 *
 *   npm run bench:memory [-- --tokens 20000 --prompt_tokens 100000 --window 1020 --steps 256 --attention standard]
 *
 * The model is a random-weight Llama-architecture decoder of about 26M parameters (hidden 512, 7 layers,
 * vocab 8192), exported by the package's own graph builder: speed depends on shapes, not on weights.
 * 1. Decode latency at equal cache length: plain transformers.js stepping from a 1024-token cache, against
 *    attention sinks (4 + 1020) in steady state (evicting every token), with lazy eviction and with
 *    compaction on every token (what copying the cache each step costs).
 * 2. Memory over a long generation: KV bytes and process RSS sampled every 1000 tokens.
 * 3. A prompt far longer than the cache: peak RSS after a 10,000-token prompt and after a 100,000-token one.
 * `--attention GroupQueryAttention` exports the model as onnxruntime-genai does (fused norms, GroupQueryAttention,
 * no position_ids), whose cache compacts on every eviction: that row then shows what the exact streaming of
 * such graphs costs.
 */
import { mkdtemp, mkdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import * as transformers from "@huggingface/transformers";
import { BaseStreamer, DynamicCache, Tensor } from "@huggingface/transformers";
import { AutoModelForCausalLM, sinkCacheStats } from "../src/index.js";
import { llamaConfig, llamaGenerationConfig } from "../src/architecture/llama_config.js";
import { buildDecoderOnnx } from "../src/onnx/decoder_export.js";
import type { AttentionOps } from "../src/onnx/decoder_graph.js";
import { randomDecoderWeights } from "../test/support/fixtures/random_weights.js";
import { mean, median } from "./stats.js";
import { benchmarkDecoderSpec } from "./decoder_spec.js";

const { values: flags } = parseArgs({
  options: {
    tokens: { type: "string", default: "20000" },
    prompt_tokens: { type: "string", default: "100000" },
    window: { type: "string", default: "1020" },
    sinks: { type: "string", default: "4" },
    steps: { type: "string", default: "256" },
    rounds: { type: "string", default: "3" },
    attention: { type: "string", default: "standard" },
  },
});
const ATTENTION = flags.attention as AttentionOps;
if (!["standard", "MultiHeadAttention", "GroupQueryAttention"].includes(ATTENTION)) {
  throw new Error(`--attention is standard, MultiHeadAttention or GroupQueryAttention, got ${ATTENTION}`);
}
const SINKS = Number(flags.sinks);
const WINDOW = Number(flags.window);
const CAPACITY = SINKS + WINDOW;
const STEPS = Number(flags.steps);
const ROUNDS = Number(flags.rounds);
const GENERATE_TOKENS = Number(flags.tokens);
const PROMPT_TOKENS = Number(flags.prompt_tokens);

transformers.env.allowRemoteModels = false;

const spec = benchmarkDecoderSpec(8192, 7);

async function writeModel(dir: string): Promise<number> {
  const weights = randomDecoderWeights(spec, 1);
  let parameters = 0;
  for (const w of weights.values()) parameters += w.data.length;
  await mkdir(join(dir, "onnx"), { recursive: true });
  const info = { maxPositions: 4096, bosId: 1, eosId: 2 };
  const style = ATTENTION === "standard" ? {} : { attention: ATTENTION, fused_norms: true, position_ids: ATTENTION !== "GroupQueryAttention", rotary_table_length: info.maxPositions };
  await writeFile(join(dir, "onnx", "model.onnx"), buildDecoderOnnx(spec, weights, style));
  await writeFile(join(dir, "config.json"), JSON.stringify(llamaConfig(spec, info)));
  await writeFile(join(dir, "generation_config.json"), JSON.stringify(llamaGenerationConfig(info)));
  return parameters;
}

const token = (t: number) => new Tensor("int64", BigInt64Array.of(BigInt(t)), [1, 1]);
const prompt = (n: number) => new Tensor("int64", BigInt64Array.from({ length: n }, (_, i) => BigInt(3 + (i * 7919) % 8000)), [1, n]);
const ones = (n: number) => new Tensor("int64", new BigInt64Array(n).fill(1n), [1, n]);

/**
 * Per-step milliseconds of plain transformers.js decoding from a cache of CAPACITY tokens: the cache is
 * prefilled short of that and decoded up to it untimed, as the sink model is warmed up, so neither side
 * pays for the prefill in its timed steps.
 */
async function plainSteps(model: transformers.PreTrainedModel, steps: number, warmup: number): Promise<number[]> {
  let past: Record<string, Tensor> = {};
  const step = async (input: Tensor, length: number) => {
    const out = await model.forward({ input_ids: input, attention_mask: ones(length), past_key_values: Object.assign(new DynamicCache(), past) });
    past = {};
    for (const [name, tensor] of Object.entries(out as Record<string, Tensor>)) {
      if (name.startsWith("present.")) past[name.replace("present.", "past_key_values.")] = tensor;
    }
  };
  await step(prompt(CAPACITY - warmup), CAPACITY - warmup);
  for (let s = 0; s < warmup; s++) await step(token(4 + s), CAPACITY - warmup + s + 1);
  const times: number[] = [];
  for (let s = 0; s < steps; s++) {
    const start = performance.now();
    await step(token(5 + s), CAPACITY + s + 1);
    times.push(performance.now() - start);
  }
  return times;
}

/** Per-step milliseconds of sink decoding in steady state (the cache full, evicting every step). */
async function sinkSteps(model: Awaited<ReturnType<typeof AutoModelForCausalLM.from_pretrained>>, steps: number): Promise<number[]> {
  const cache = new DynamicCache();
  await model.forward({ input_ids: prompt(CAPACITY), past_key_values: cache });
  for (let s = 0; s < WARMUP; s++) await model.forward({ input_ids: token(4 + s), past_key_values: cache });
  const times: number[] = [];
  for (let s = 0; s < steps; s++) {
    const start = performance.now();
    await model.forward({ input_ids: token(5 + s), past_key_values: cache });
    times.push(performance.now() - start);
  }
  return times;
}

/** Untimed decode steps after each prefill: at least two compaction cycles of the sink cache. */
const WARMUP = 160;


async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "attention-sinks-bench-"));
  try {
    const parameters = await writeModel(dir);
    const kvPerToken = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 4;
    console.log(`model: random Llama, ${(parameters / 1e6).toFixed(1)}M parameters, ${ATTENTION} attention; cache ${SINKS} + ${WINDOW} tokens = ${((CAPACITY * kvPerToken) / 2 ** 20).toFixed(1)} MiB of KV`);
    const plain = await transformers.AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true });
    const lazy = await AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true, attention_sink_size: SINKS, attention_sink_window_size: WINDOW });
    const eager = await AutoModelForCausalLM.from_pretrained(dir, {
      local_files_only: true, attention_sink_size: SINKS, attention_sink_window_size: WINDOW, attention_sink_compaction_interval: 0,
    });
    const K = lazy.attention_sinks.compaction_interval;
    // Plain steps cover cache lengths CAPACITY..CAPACITY+K, the range the lazy sink buffers cycle through.
    const samples: Record<string, number[]> = { plain: [], lazy: [], eager: [] };
    for (let round = 0; round < ROUNDS; round++) {
      // (When the graph compacts on every eviction, K is 0 and one run of STEPS plain steps stands for it.)
      const span = K > 0 ? K : STEPS;
      for (let r = 0; r < Math.ceil(STEPS / span); r++) samples.plain.push(...(await plainSteps(plain, span, WARMUP)));
      samples.lazy.push(...(await sinkSteps(lazy, STEPS)));
      samples.eager.push(...(await sinkSteps(eager, STEPS)));
    }
    console.log("\ndecode latency per token (ms), cache length " + CAPACITY + (K ? `..${CAPACITY + K}` : ""));
    console.log("                                            mean   median   ratio of means   ratio of medians");
    const row = (name: string, xs: number[]) =>
      console.log(
        `${name.padEnd(40)} ${mean(xs).toFixed(3).padStart(7)} ${median(xs).toFixed(3).padStart(8)}   ` +
          `${(mean(xs) / mean(samples.plain)).toFixed(3).padStart(14)}   ${(median(xs) / median(samples.plain)).toFixed(3).padStart(16)}`,
      );
    row("plain transformers.js", samples.plain);
    row(K ? `attention sinks (compaction every ${K})` : "attention sinks (the graph's rule: every token)", samples.lazy);
    row("attention sinks (compaction every token)", samples.eager);

    if (GENERATE_TOKENS > 0) await memoryOverGeneration(lazy);
    if (PROMPT_TOKENS > 0) await longPrompts(lazy);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

type StreamingModel = Awaited<ReturnType<typeof AutoModelForCausalLM.from_pretrained>>;

/** KV bytes and RSS every 1000 tokens of a long greedy generation. */
async function memoryOverGeneration(lazy: StreamingModel): Promise<void> {
  const cache = new DynamicCache();
  const rows: { tokens: number; kv: number; buffers: number; rss: number }[] = [];
  let produced = 0;
  class MemoryProbe extends BaseStreamer {
    override put(): void {
      produced++;
      if (produced % 1000 === 0) {
        const stats = sinkCacheStats(cache)!;
        rows.push({ tokens: stats.seen_tokens, kv: stats.kv_cache_bytes, buffers: stats.kv_buffer_bytes, rss: process.memoryUsage().rss });
      }
    }
    override end(): void {}
  }
  const started = performance.now();
  await lazy.generate({ input_ids: prompt(8), max_new_tokens: GENERATE_TOKENS, min_new_tokens: GENERATE_TOKENS, do_sample: false, past_key_values: cache, streamer: new MemoryProbe() as unknown as transformers.TextStreamer });
  const seconds = (performance.now() - started) / 1000;
  console.log(`\n${GENERATE_TOKENS} tokens generated in ${seconds.toFixed(1)} s (${(GENERATE_TOKENS / seconds).toFixed(1)} tokens/s)`);
  console.log("tokens   kv_cache_bytes   kv_buffer_bytes   rss (MiB)");
  for (const r of rows) console.log(`${String(r.tokens).padStart(6)}   ${String(r.kv).padStart(14)}   ${String(r.buffers).padStart(15)}   ${(r.rss / 2 ** 20).toFixed(1).padStart(9)}`);
  const settled = rows.slice(Math.min(2, rows.length - 1));
  const kvValues = new Set(settled.map((r) => r.kv));
  const rss = settled.map((r) => r.rss);
  console.log(`\nkv_cache_bytes after the cache filled: ${kvValues.size === 1 ? "constant" : "VARIES"} (${[...kvValues].join(", ")})`);
  console.log(`RSS from ${rows[Math.min(2, rows.length - 1)]?.tokens} tokens on: min ${(Math.min(...rss) / 2 ** 20).toFixed(1)} MiB, max ${(Math.max(...rss) / 2 ** 20).toFixed(1)} MiB, spread ${(((Math.max(...rss) - Math.min(...rss)) / Math.min(...rss)) * 100).toFixed(1)}%`);
}

/** Long prompts are fed in chunks, so peak memory must not grow with the prompt. */
async function longPrompts(lazy: StreamingModel): Promise<void> {
  const mib = (kib: number) => (kib / 1024).toFixed(1);
  for (const length of [PROMPT_TOKENS / 10, PROMPT_TOKENS]) {
    const longCache = new DynamicCache();
    const begun = performance.now();
    await lazy.generate({ input_ids: prompt(length), max_new_tokens: 1, past_key_values: longCache });
    const stats = sinkCacheStats(longCache)!;
    console.log(
      `${length}-token prompt: ${((performance.now() - begun) / 1000).toFixed(1)} s, cache ${stats.cached_tokens} tokens, ` +
        `peak RSS so far ${mib(process.resourceUsage().maxRSS)} MiB`,
    );
  }
}

await main();

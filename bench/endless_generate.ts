/**
 * Memory of endless generation through the library: transformers.js `generate()` in bounded calls that
 * continue one cache (the README's multi-turn way), sampling, each call's text discarded.
 *
 *   npm run build && node dist/bench/endless_generate.js MODEL [--tokens 1000000 --call_tokens 1000 --every 20000]
 *
 * Prints KV bytes and process RSS every `--every` tokens, then how RSS moved from the first row on (the
 * goal: within 2%). One `generate()` of all the tokens would instead keep every id: transformers.js returns
 * the whole sequence.
 */
import { parseArgs } from "node:util";
import * as transformers from "@huggingface/transformers";
import { AutoModelForCausalLM, AutoTokenizer, DynamicCache, sinkCacheStats } from "../src/index.js";

const { values: flags, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    tokens: { type: "string", default: "1000000" },
    call_tokens: { type: "string", default: "1000" },
    every: { type: "string", default: "20000" },
  },
});
const model_name_or_path = positionals[0];
if (!model_name_or_path) throw new Error("usage: node dist/bench/endless_generate.js MODEL [--tokens N --call_tokens N --every N]");
const [TOKENS, CALL_TOKENS, EVERY] = [Number(flags.tokens), Number(flags.call_tokens), Number(flags.every)];
transformers.env.allowRemoteModels = false;

const tokenizer = await AutoTokenizer.from_pretrained(model_name_or_path);
const model = await AutoModelForCausalLM.from_pretrained(model_name_or_path, { dtype: "fp32" });
const past_key_values = new DynamicCache();
const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
const rows: { tokens: number; kv: number; rss: number }[] = [];
const start = performance.now();
let generated = 0;
let lastReport = { at: start, generated: 0 };
let inputs: Record<string, unknown> = tokenizer("Once upon a time");
while (generated < TOKENS) {
  const tokens = Math.min(CALL_TOKENS, TOKENS - generated);
  // Only the turn's tokens come back: the cache carries the stream; the end-of-text token is suppressed.
  await model.generate({ ...inputs, past_key_values, max_new_tokens: tokens, min_new_tokens: tokens, do_sample: true, top_k: 50 });
  generated += tokens;
  inputs = { input_ids: new transformers.Tensor("int64", new BigInt64Array(0), [1, 0]) };
  if (generated % EVERY === 0 || generated === TOKENS) {
    const stats = sinkCacheStats(past_key_values)!;
    rows.push({ tokens: generated, kv: stats.kv_cache_bytes, rss: process.memoryUsage().rss });
    const now = performance.now();
    const rate = ((generated - lastReport.generated) / (now - lastReport.at)) * 1000;
    lastReport = { at: now, generated };
    console.log(`${generated} tokens, ${rate.toFixed(0)} tokens/s: KV ${stats.kv_cache_bytes} bytes, RSS ${mib(rows.at(-1)!.rss)} MiB`);
  }
}
const rss = rows.map((r) => r.rss);
const kv = new Set(rows.map((r) => r.kv));
console.log(
  `KV bytes ${kv.size === 1 ? `constant (${[...kv][0]})` : `varied: ${[...kv].join(", ")}`}; RSS from ${rows[0].tokens} tokens on: ` +
    `first ${mib(rss[0])} MiB, last ${mib(rss.at(-1)!)} MiB, min ${mib(Math.min(...rss))}, max ${mib(Math.max(...rss))}, ` +
    `spread ${(((Math.max(...rss) - Math.min(...rss)) / Math.min(...rss)) * 100).toFixed(1)}%`,
);

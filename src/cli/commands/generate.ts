/**
 * `attention-sinks generate`: streams a continuation of a prompt to stdout, with live statistics on stderr.
 * Also home of the setup and summary lines `chat` shares.
 */
import { existsSync } from "node:fs";
import { text as readStream } from "node:stream/consumers";
import { random } from "@huggingface/transformers";
import type { StreamingBackend } from "../../backend/backend.js";
import type { SamplingOptions } from "../../generation/decoding.js";
import { GenerationSession, type TurnResult } from "../../generation/session.js";
import { ensureFileTarget } from "../../platform/output_paths.js";
import { flags, UsageError, type FlagValues } from "../args.js";
import { defineCommand } from "../command.js";
import { count, formatBytes } from "../format.js";
import { CACHE_FLAGS, EXPERIMENT_FLAG, loadBackend, MODEL_FLAG, requiredString, RUNTIME_FLAGS, SAMPLING_FLAGS, samplingOptions } from "../model_flags.js";
import { handleInterrupts } from "../signals.js";
import { describeSample, JsonLines, maxRssBytes, StatusLine, streamSample, TextOutput, type StreamSample } from "../terminal.js";

export const OUTPUT_FLAGS = flags({
  output: { type: "string", metavar: "FILE", description: "also write the text to FILE as it is produced" },
  stats_json: { type: "string", metavar: "FILE", description: "write statistics to FILE as JSON lines (cache tokens, KV bytes, RSS, tokens/s) and a final summary" },
  overwrite: { type: "boolean", description: "replace existing --output and --stats_json files" },
});

/** Refuses, before the model loads, to replace an output file the user did not allow to be replaced. */
export function checkOutputFiles(values: FlagValues<typeof OUTPUT_FLAGS>): void {
  for (const name of ["output", "stats_json"] as const) {
    const path = values[name];
    if (path === undefined) continue;
    if (existsSync(path) && !values.overwrite) throw new UsageError(`--${name} ${path} already exists; pass --overwrite to replace it`);
    ensureFileTarget(path);
  }
}

/** One line on what is about to run. */
export function describeSetup(backend: StreamingBackend, experiment: string, sampling: SamplingOptions): string {
  const sinks = backend.attention_sinks;
  const cache = sinks ? `${count(sinks.sink_size)} sink + ${count(sinks.window_size)} window tokens` : "a dense cache that grows with every token";
  const decoding = sampling.do_sample
    ? `sampling (temperature ${sampling.temperature}, top_k ${sampling.top_k}, top_p ${sampling.top_p})`
    : "greedy decoding";
  return `${backend.model_type} model, ${experiment}: ${cache}; ${decoding}`;
}

/** What a run did: the prompt's prefill, then generation (its rate over generation time alone), and the cache. */
export function describeSummary(
  result: { prompt_tokens: number; prefill_seconds: number; new_tokens: number; generation_seconds: number; stopped: string },
  stats: StreamSample,
): string[] {
  const rate = (tokens: number, seconds: number) => count(seconds > 0 ? tokens / seconds : 0);
  return [
    `prefill: ${count(result.prompt_tokens)} prompt tokens in ${result.prefill_seconds.toFixed(1)} s (${rate(result.prompt_tokens, result.prefill_seconds)} tokens/s)`,
    `${count(result.new_tokens)} tokens in ${result.generation_seconds.toFixed(1)} s (${rate(result.new_tokens, result.generation_seconds)} tokens/s); stopped: ${result.stopped}`,
    `cache: ${count(stats.cached_tokens)} of ${count(stats.seen_tokens)} tokens attended; KV ${formatBytes(stats.kv_cache_bytes)} ` +
      `(buffers ${formatBytes(stats.kv_buffer_bytes)}); peak RSS ${formatBytes(maxRssBytes())}`,
  ];
}

async function readPrompt(flag: string | undefined): Promise<string> {
  if (typeof flag === "string") return flag;
  if (process.stdin.isTTY) throw new UsageError("give the prompt with --prompt TEXT or on stdin (echo TEXT | attention-sinks generate ...)");
  return (await readStream(process.stdin)).replace(/\r?\n$/, "");
}

const spec = {
  name: "generate",
  summary: "Stream a continuation of a prompt: text on stdout, live statistics on stderr; Ctrl-C stops with a summary.",
  flags: flags({
    ...MODEL_FLAG,
    prompt: { type: "string", metavar: "TEXT", description: "the text to continue (default: read from stdin)" },
    hide_prompt: { type: "boolean", description: "write only the continuation, not the prompt before it" },
    stop: { type: "strings", metavar: "TEXT", description: "stop once the text contains TEXT, which is not written (repeat for several)" },
    max_new_tokens: { type: "integer", min: 1, default: 1000, metavar: "N", description: "tokens to generate at most (any number: memory stays constant)" },
    min_new_tokens: { type: "integer", min: 0, default: 0, metavar: "N", description: "suppress end-of-sequence tokens until N tokens are generated" },
    ...CACHE_FLAGS,
    ...EXPERIMENT_FLAG,
    ...SAMPLING_FLAGS,
    ...RUNTIME_FLAGS,
    ...OUTPUT_FLAGS,
    stats_every: { type: "integer", min: 1, default: 500, metavar: "N", description: "with --stats_json, a progress record every N tokens" },
  }),
  examples: [
    'attention-sinks generate --model_name_or_path ../shared/models/tinystories-656k --prompt "Once upon a time"',
    "head -n 60 story.txt | attention-sinks generate --model_name_or_path MODEL --max_new_tokens 100   # a prompt longer than the context",
    "head -n 60 story.txt | attention-sinks generate --model_name_or_path MODEL --max_new_tokens 100 --experiment transformers",
    "attention-sinks generate --model_name_or_path MODEL --prompt TEXT --max_new_tokens 100000 --min_new_tokens 100000 --do_sample --seed 1 --stats_json stats.jsonl > story.txt",
  ],
};

export const generateCommand = defineCommand(spec, async ({ flags: values }) => {
  const { experiment, max_new_tokens, min_new_tokens } = values;
  if (min_new_tokens > max_new_tokens) throw new UsageError(`--min_new_tokens (${min_new_tokens}) exceeds --max_new_tokens (${max_new_tokens})`);
  requiredString(values.model_name_or_path, "model_name_or_path");
  const sampling = samplingOptions(values);
  checkOutputFiles(values);
  const prompt = await readPrompt(values.prompt);
  const backend = await loadBackend(values);
  const input_ids = backend.tokenizer.encode(prompt);
  if (input_ids.length === 0) throw new UsageError("the prompt is empty and this tokenizer adds no start token: give a prompt");
  const session = new GenerationSession(backend);
  process.stderr.write(`${describeSetup(backend, experiment, sampling)}\n`);

  const text = new TextOutput(values.output, () => session.interrupt());
  const stats = new JsonLines(values.stats_json);
  const status = new StatusLine();
  const interrupts = handleInterrupts(() => session.interrupt());
  if (values.seed !== undefined) random.seed(values.seed);
  const started = performance.now();
  const sample = (tokens: number) => streamSample(tokens, (performance.now() - started) / 1000, session.stats());
  let result: TurnResult;
  try {
    if (!values.hide_prompt) text.write(prompt);
    result = await session.generate(input_ids, {
      ...sampling,
      max_new_tokens,
      min_new_tokens,
      stop_strings: values.stop ?? [],
      onText: (piece) => text.write(piece),
      onToken: (tokens) => {
        if (tokens % values.stats_every === 0) stats.write({ event: "progress", ...sample(tokens) });
        status.update(() => describeSample(sample(tokens)));
      },
    });
  } finally {
    interrupts.uninstall();
    status.clear();
    text.close();
  }
  // A reader that stopped reading (`| head`) is not an interruption by the user.
  const stopped = text.stdoutClosed ? "output closed" : result.stopped;
  const final = sample(result.new_tokens);
  const { prompt_tokens, prefill_seconds, generation_seconds } = result;
  stats.write({ event: "summary", ...final, prompt_tokens, prefill_seconds, generation_seconds, stopped, max_rss_bytes: maxRssBytes() });
  stats.close();
  process.stderr.write(describeSummary({ ...result, stopped }, final).join("\n") + "\n");
  return stopped === "interrupted" ? (interrupts.exitCode ?? 130) : 0;
});

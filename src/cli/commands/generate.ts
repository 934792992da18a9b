/**
 * `attention-sinks generate`: streams a continuation of a prompt to stdout, with live statistics on stderr.
 * Also home of the flags and checks `chat` shares.
 */
import { text as readStream } from "node:stream/consumers";
import { random, type DataType, type DeviceType, type Tensor } from "@huggingface/transformers";
import { AttentionSinkOptionError } from "../../cache/options.js";
import { EXPERIMENTS, type Experiment } from "../../perplexity/experiments.js";
import { count, formatBytes } from "../format.js";
import { loadForGeneration, type LoadedModel } from "../load.js";
import { GenerationSession, type SamplingOptions, type TurnResult } from "../../generation/session.js";
import {
  describeSample,
  handleInterrupts,
  JsonLines,
  maxRssBytes,
  StatusLine,
  streamSample,
  TextOutput,
  type StreamSample,
} from "../terminal.js";
import { UsageError, type FlagSpec, type FlagValue } from "../args.js";
import type { Command } from "../command.js";
import { DEVICES, DTYPES } from "../model_flags.js";


export const MODEL_FLAG: Readonly<Record<string, FlagSpec>> = {
  model_name_or_path: {
    type: "string",
    metavar: "PATH",
    description: "the model: a transformers.js model directory, a checkpoint the package converts, or a Hub id (required)",
  },
};

export const SINK_FLAGS: Readonly<Record<string, FlagSpec>> = {
  attention_sink_size: { type: "integer", min: 0, metavar: "N", description: "first tokens kept for ever as attention sinks (default 4)" },
  attention_sink_window_size: {
    type: "integer",
    min: 1,
    metavar: "N",
    description: "most recent tokens kept after the sinks (default 1020, or less when the model's context is shorter)",
  },
};

export const SAMPLING_FLAGS: Readonly<Record<string, FlagSpec>> = {
  do_sample: { type: "boolean", description: "sample the next token (default: greedy decoding)" },
  temperature: { type: "number", metavar: "T", description: "softmax temperature, > 0 (with --do_sample; default 1.0)" },
  top_k: { type: "integer", min: 0, metavar: "K", description: "sample among the K most likely tokens, 0 for all (with --do_sample; default 50)" },
  top_p: { type: "number", metavar: "P", description: "sample among the fewest tokens whose probabilities sum to P, in (0, 1] (with --do_sample; default 1.0)" },
  repetition_penalty: {
    type: "number",
    default: 1,
    metavar: "X",
    description: "penalise the tokens among the last sink + window ones (scores divided by X; 1 = off), at a cost that does not grow with the stream",
  },
  seed: { type: "integer", min: 0, metavar: "N", description: "seed the sampler for a reproducible run" },
};

export const RUNTIME_FLAGS: Readonly<Record<string, FlagSpec>> = {
  dtype: { type: "string", choices: DTYPES, description: "weights to load (default: the model's own; the sink cache needs a float32 KV cache)" },
  device: { type: "string", choices: DEVICES, description: "where onnxruntime runs the model (default cpu)" },
  output: { type: "string", metavar: "FILE", description: "also write the text to FILE as it is produced" },
  stats_json: { type: "string", metavar: "FILE", description: "write statistics to FILE as JSON lines (cache tokens, KV bytes, RSS, tokens/s) and a final summary" },
};

type Flags = Record<string, FlagValue>;

export function requiredString(flags: Flags, name: string): string {
  const value = flags[name];
  if (typeof value !== "string" || value === "") throw new UsageError(`--${name} is required`);
  return value;
}

/** The sampling flags, checked together. */
export function samplingOptions(flags: Flags): SamplingOptions {
  const do_sample = flags.do_sample === true;
  for (const name of ["temperature", "top_k", "top_p"]) {
    if (flags[name] !== undefined && !do_sample) throw new UsageError(`--${name} only applies to sampling: add --do_sample`);
  }
  const { temperature = 1, top_k = 50, top_p = 1, repetition_penalty } = flags as Record<string, number | undefined>;
  if (!(temperature > 0)) throw new UsageError(`--temperature must be greater than 0, got ${temperature} (greedy decoding is the default without --do_sample)`);
  if (!(top_p > 0 && top_p <= 1)) throw new UsageError(`--top_p must be in (0, 1], got ${top_p}`);
  if (!(repetition_penalty! > 0)) throw new UsageError(`--repetition_penalty must be greater than 0, got ${repetition_penalty}`);
  return { do_sample, temperature, top_k, top_p, repetition_penalty };
}

/** Loads the model named by the flags; sink settings the model cannot take are usage errors. */
export async function loadModel(flags: Flags, experiment: Experiment): Promise<LoadedModel> {
  try {
    return await loadForGeneration(requiredString(flags, "model_name_or_path"), {
      experiment,
      attention_sink_size: flags.attention_sink_size as number | undefined,
      attention_sink_window_size: flags.attention_sink_window_size as number | undefined,
      dtype: flags.dtype as DataType | undefined,
      device: flags.device as DeviceType | undefined,
    });
  } catch (error) {
    if (error instanceof AttentionSinkOptionError) throw new UsageError(error.message.replaceAll("attention_sink_", "--attention_sink_"));
    throw error;
  }
}

/** One line on what is about to run. */
export function describeSetup(loaded: LoadedModel, experiment: Experiment, sampling: SamplingOptions): string {
  const { model, attention_sinks } = loaded;
  const cache = attention_sinks
    ? `${count(attention_sinks.sink_size)} sink + ${count(attention_sinks.window_size)} window tokens`
    : "a dense cache that grows with every token";
  const decoding = sampling.do_sample
    ? `sampling (temperature ${sampling.temperature}, top_k ${sampling.top_k}, top_p ${sampling.top_p})`
    : "greedy decoding";
  return `${model.config.model_type} model, ${experiment}: ${cache}; ${decoding}`;
}

export function describeSummary(result: { new_tokens: number; seconds: number; stopped: string }, stats: StreamSample): string[] {
  return [
    `${count(result.new_tokens)} tokens in ${result.seconds.toFixed(1)} s (${count(stats.tokens_per_second)} tokens/s); stopped: ${result.stopped}`,
    `cache: ${count(stats.cached_tokens)} of ${count(stats.seen_tokens)} tokens attended; KV ${formatBytes(stats.kv_cache_bytes)} ` +
      `(buffers ${formatBytes(stats.kv_buffer_bytes)}); peak RSS ${formatBytes(maxRssBytes())}`,
  ];
}

async function readPrompt(flag: FlagValue): Promise<string> {
  if (typeof flag === "string") return flag;
  if (process.stdin.isTTY) throw new UsageError("give the prompt with --prompt TEXT or on stdin (echo TEXT | attention-sinks generate ...)");
  return (await readStream(process.stdin)).replace(/\r?\n$/, "");
}

export const generateCommand: Command = {
  spec: {
    name: "generate",
    summary: "Stream a continuation of a prompt: text on stdout, live statistics on stderr; Ctrl-C stops with a summary.",
    flags: {
      ...MODEL_FLAG,
      prompt: { type: "string", metavar: "TEXT", description: "the text to continue (default: read from stdin)" },
      max_new_tokens: { type: "integer", min: 1, default: 1000, metavar: "N", description: "tokens to generate at most (any number: memory stays constant)" },
      min_new_tokens: { type: "integer", min: 0, default: 0, metavar: "N", description: "suppress end-of-sequence tokens until N tokens are generated" },
      ...SINK_FLAGS,
      experiment: {
        type: "string",
        choices: EXPERIMENTS,
        default: "attention_sinks",
        description: "attention_sinks: sinks + window; windowed: no sinks, a window of the same total size; transformers: plain transformers.js, whose cache grows with every token",
      },
      ...SAMPLING_FLAGS,
      ...RUNTIME_FLAGS,
      stats_every: { type: "integer", min: 1, default: 500, metavar: "N", description: "with --stats_json, a progress record every N tokens" },
    },
    examples: [
      'attention-sinks generate --model_name_or_path ../shared/models/tinystories-656k --prompt "Once upon a time"',
      "head -n 60 story.txt | attention-sinks generate --model_name_or_path MODEL --max_new_tokens 100   # a prompt longer than the context",
      "head -n 60 story.txt | attention-sinks generate --model_name_or_path MODEL --max_new_tokens 100 --experiment transformers",
      "attention-sinks generate --model_name_or_path MODEL --prompt TEXT --max_new_tokens 100000 --min_new_tokens 100000 --do_sample --seed 1 --stats_json stats.jsonl > story.txt",
    ],
  },

  async run({ flags }) {
    const experiment = flags.experiment as Experiment;
    const max_new_tokens = flags.max_new_tokens as number;
    const min_new_tokens = flags.min_new_tokens as number;
    if (min_new_tokens > max_new_tokens) throw new UsageError(`--min_new_tokens (${min_new_tokens}) exceeds --max_new_tokens (${max_new_tokens})`);
    requiredString(flags, "model_name_or_path");
    const sampling = samplingOptions(flags);
    const prompt = await readPrompt(flags.prompt);
    const loaded = await loadModel(flags, experiment);
    const input_ids = loaded.tokenizer(prompt).input_ids as Tensor;
    if (input_ids.dims[1] === 0) throw new UsageError("the prompt is empty and this tokenizer adds no start token: give a prompt");
    const session = new GenerationSession(loaded.model, loaded.tokenizer, { repetition_window: loaded.window_tokens });
    process.stderr.write(`${describeSetup(loaded, experiment, sampling)}\n`);

    const text = new TextOutput(flags.output as string | undefined, () => session.interrupt());
    const stats = new JsonLines(flags.stats_json as string | undefined);
    const status = new StatusLine();
    const every = flags.stats_every as number;
    const interrupts = handleInterrupts(() => session.interrupt());
    if (flags.seed !== undefined) random.seed(flags.seed as number);
    const started = performance.now();
    const sample = (tokens: number) => streamSample(tokens, (performance.now() - started) / 1000, session.stats());
    let result: TurnResult;
    try {
      text.write(prompt);
      result = await session.generate(input_ids, {
        ...sampling,
        max_new_tokens,
        min_new_tokens,
        onText: (piece) => text.write(piece),
        onToken: (tokens) => {
          if (tokens % every === 0) stats.write({ event: "progress", ...sample(tokens) });
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
    stats.write({ event: "summary", ...final, prompt_tokens: result.prompt_tokens, stopped, max_rss_bytes: maxRssBytes() });
    stats.close();
    process.stderr.write(describeSummary({ ...result, stopped }, final).join("\n") + "\n");
    return stopped === "interrupted" ? (interrupts.exitCode ?? 130) : 0;
  },
};

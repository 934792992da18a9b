/**
 * One perplexity experiment from end to end, as `attention-sinks perplexity` runs it: the dataset's first
 * samples, tokenized, streamed through the experiment's model, one CSV row per evaluated token.
 */
import { existsSync, rmSync } from "node:fs";
import { checkDirectory, ensureDirectory } from "../platform/output_paths.js";
import { join } from "node:path";
import { CsvLogWriter, OutputExistsError } from "./csv.js";
import { DatasetError, loadTextSamples, type DatasetOptions } from "./dataset.js";
import { evaluatePerplexity, type EvaluationResult, type TokenRecord } from "./evaluate.js";
import type { TextTokenizer } from "../backend/backend.js";
import { experimentCache, type Experiment } from "../backend/experiments.js";
import { defaultBackend, loadStreamingBackend, type StreamingLoadOptions } from "../engines/load.js";

export interface PerplexityRunOptions extends StreamingLoadOptions, DatasetOptions {
  /** A transformers.js model directory, a convertible checkpoint, or a Hub id. */
  model_name_or_path: string;
  experiment: Experiment;
  /** Tokens to evaluate (default 8192). */
  num_tokens?: number;
  /** Samples of the dataset to stream, one after the other (default 1). */
  num_samples?: number;
  /** The CSV goes to `{output_dir}/{experiment}.csv`. */
  output_dir: string;
  overwrite?: boolean;
}

export interface PerplexityRunHooks {
  /** Called after each token, once its row is buffered for the CSV. */
  onToken?: (record: TokenRecord) => void;
  /** Called once the CSV is created, when the evaluation starts, so a signal handler can flush it. */
  onCsv?: (writer: CsvLogWriter) => void;
  /** Stops the run after the token in flight; rows so far stay in the CSV. */
  signal?: AbortSignal;
}

export interface PerplexityRunResult extends EvaluationResult {
  csv: string;
}

/** Characters tokenized first per token wanted; doubled until enough tokens come out. */
const CHARACTERS_PER_TOKEN = 8;

/**
 * The ids of a sample as the model was trained on them: with the BOS the tokenizer adds or asks for. With
 * `wanted`, only a prefix long enough for that many ids is tokenized (a long text otherwise takes far longer
 * to tokenize than to evaluate): it ends at a line break, where every tokenizer starts a new piece, and its
 * last id, which could merge with what follows, is dropped.
 */
export function encodeSample(tokenizer: TextTokenizer, text: string, wanted = Infinity): number[] {
  for (let length = CHARACTERS_PER_TOKEN * wanted; length < text.length; length *= 2) {
    const cut = text.lastIndexOf("\n", length);
    if (cut <= 0) continue;
    const ids = withBos(tokenizer, tokenizer.encode(text.slice(0, cut)));
    if (ids.length > wanted) return ids.slice(0, -1);
  }
  return withBos(tokenizer, tokenizer.encode(text));
}

function withBos(tokenizer: TextTokenizer, ids: number[]): number[] {
  const bos = tokenizer.bos_token_id;
  return tokenizer.add_bos_token && bos !== undefined && bos !== null && ids[0] !== bos ? [bos, ...ids] : ids;
}

export async function runPerplexity(options: PerplexityRunOptions, hooks: PerplexityRunHooks = {}): Promise<PerplexityRunResult> {
  const csv = join(options.output_dir, `${options.experiment}.csv`);
  const overwrite = options.overwrite ?? false;
  if (!overwrite && existsSync(csv)) throw new OutputExistsError(`${csv} already exists; pass --overwrite to replace it`);
  checkDirectory(options.output_dir);
  // The sizes given are checked before anything is read (the model's default window is not needed for that).
  experimentCache(options.experiment, options, () => 1);

  // Read the first sample before creating anything, so a missing dataset leaves no empty CSV behind.
  const texts = loadTextSamples(options);
  const first = await texts.next();
  const numTokens = options.num_tokens ?? 8192;
  const backend = options.backend ?? defaultBackend(options.model_name_or_path);
  // llama.cpp allocates a dense cache up front: by default, room for every token a sample streams.
  const denseCells = backend === "llama.cpp" && options.experiment === "transformers" ? { context_size: options.context_size ?? numTokens + 1 } : {};
  const stream = await loadStreamingBackend(options.model_name_or_path, { ...options, backend, ...denseCells });
  const tokenizer = stream.tokenizer;
  // A sample of n ids evaluates n - 1 tokens: each is tokenized only as far as the tokens still to evaluate.
  let remaining = numTokens;
  const encode = (text: string) => {
    const ids = encodeSample(tokenizer, text, remaining + 2);
    remaining -= Math.max(0, ids.length - 1);
    return ids;
  };
  // Tokenized before the CSV exists, so a failure there leaves nothing behind.
  const firstIds = first.done ? [] : encode(first.value);

  const numSamples = options.num_samples ?? 1;
  async function* samples(): AsyncGenerator<number[]> {
    if (first.done || numSamples < 1) return;
    yield firstIds;
    // Each further sample is read only once the previous ones are done and it is wanted.
    for (let taken = 1; taken < numSamples && remaining > 0; taken++) {
      const next = await texts.next();
      if (next.done) return;
      yield encode(next.value);
    }
  }

  ensureDirectory(options.output_dir);
  const writer = new CsvLogWriter(csv, { overwrite });
  hooks.onCsv?.(writer);
  try {
    const result = await evaluatePerplexity(stream, samples(), {
      num_tokens: numTokens,
      signal: hooks.signal,
      onToken: (record) => {
        writer.append(record);
        hooks.onToken?.(record);
      },
    });
    if (result.tokens === 0 && !result.interrupted) {
      // A header without rows is worth nothing, and would make the rerun need --overwrite.
      writer.close();
      rmSync(csv, { force: true });
      throw new DatasetError("no token was evaluated: the dataset's samples have fewer than 2 tokens; no CSV was written");
    }
    return { ...result, csv };
  } finally {
    writer.close();
  }
}

/**
 * One perplexity experiment from end to end, as `attention-sinks perplexity` runs it: the dataset's first
 * samples, tokenized, streamed through the experiment's model, one CSV row per evaluated token.
 */
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { CsvLogWriter, OutputExistsError } from "./csv.js";
import { loadTextSamples, type DatasetOptions } from "./dataset.js";
import { evaluatePerplexity, type EvaluationResult, type TokenRecord } from "./evaluate.js";
import type { TextTokenizer } from "../backend/backend.js";
import { experimentCache, type Experiment } from "../backend/experiments.js";
import { loadTransformersBackend, type BackendLoadOptions } from "../transformers/backend.js";

export interface PerplexityRunOptions extends BackendLoadOptions, DatasetOptions {
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

/** The ids of a sample as the model was trained on them: with the BOS the tokenizer adds or asks for. */
export function encodeSample(tokenizer: TextTokenizer, text: string): number[] {
  const ids = tokenizer.encode(text);
  const bos = tokenizer.bos_token_id;
  return tokenizer.add_bos_token && bos !== undefined && bos !== null && ids[0] !== bos ? [bos, ...ids] : ids;
}

export async function runPerplexity(options: PerplexityRunOptions, hooks: PerplexityRunHooks = {}): Promise<PerplexityRunResult> {
  const csv = join(options.output_dir, `${options.experiment}.csv`);
  const overwrite = options.overwrite ?? false;
  if (!overwrite && existsSync(csv)) throw new OutputExistsError(`${csv} already exists; pass --overwrite to replace it`);
  // The sizes given are checked before anything is read (the model's default window is not needed for that).
  experimentCache(options.experiment, options, () => 1);

  // Read the first sample before creating anything, so a missing dataset leaves no empty CSV behind.
  const texts = loadTextSamples(options);
  const first = await texts.next();
  const stream = await loadTransformersBackend(options.model_name_or_path, options);
  const tokenizer = stream.tokenizer;
  // Tokenized before the CSV exists: a long text takes a while, and nothing is worth keeping until it is done.
  const firstIds = first.done ? [] : encodeSample(tokenizer, first.value);

  const numSamples = options.num_samples ?? 1;
  async function* samples(): AsyncGenerator<number[]> {
    if (first.done || numSamples < 1) return;
    yield firstIds;
    // Each further sample is read only once the previous ones are done and it is wanted.
    for (let taken = 1; taken < numSamples; taken++) {
      const next = await texts.next();
      if (next.done) return;
      yield encodeSample(tokenizer, next.value);
    }
  }

  mkdirSync(options.output_dir, { recursive: true });
  const writer = new CsvLogWriter(csv, { overwrite });
  hooks.onCsv?.(writer);
  try {
    const result = await evaluatePerplexity(stream, samples(), {
      num_tokens: options.num_tokens ?? 8192,
      signal: hooks.signal,
      onToken: (record) => {
        writer.append(record);
        hooks.onToken?.(record);
      },
    });
    return { ...result, csv };
  } finally {
    writer.close();
  }
}

/**
 * One perplexity experiment from end to end, as `attention-sinks perplexity` runs it: the dataset's first
 * samples, tokenized, streamed through the experiment's model, one CSV row per evaluated token.
 */
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { AutoTokenizer, type PreTrainedTokenizer } from "@huggingface/transformers";
import { CsvLogWriter, OutputExistsError } from "./csv.js";
import { loadTextSamples, type DatasetOptions } from "./dataset.js";
import { evaluatePerplexity, type EvaluationResult, type TokenRecord } from "./evaluate.js";
import { loadStepper, resolveModelPath, sinkLayout, type Experiment, type ExperimentOptions } from "./experiments.js";

export interface PerplexityRunOptions extends ExperimentOptions, DatasetOptions {
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
export function encodeSample(tokenizer: PreTrainedTokenizer, text: string): number[] {
  const ids = tokenizer.encode(text);
  const bos = tokenizer.bos_token_id;
  const addBos = (tokenizer.config as { add_bos_token?: boolean }).add_bos_token === true;
  return addBos && bos !== undefined && bos !== null && ids[0] !== bos ? [bos, ...ids] : ids;
}

export async function runPerplexity(options: PerplexityRunOptions, hooks: PerplexityRunHooks = {}): Promise<PerplexityRunResult> {
  const csv = join(options.output_dir, `${options.experiment}.csv`);
  const overwrite = options.overwrite ?? false;
  if (!overwrite && existsSync(csv)) throw new OutputExistsError(`${csv} already exists; pass --overwrite to replace it`);
  if (options.experiment !== "transformers") sinkLayout(options.experiment, options);

  // Read the first sample before creating anything, so a missing dataset leaves no empty CSV behind.
  const texts = loadTextSamples(options);
  const first = await texts.next();
  const { path: model, local } = await resolveModelPath(options.model_name_or_path);
  const tokenizer = await AutoTokenizer.from_pretrained(model, {
    ...(options.revision === undefined ? {} : { revision: options.revision }),
    ...(local ? { local_files_only: true } : {}),
  });
  // Tokenized before the CSV exists: a long text takes a while, and nothing is worth keeping until it is done.
  const firstIds = first.done ? [] : encodeSample(tokenizer, first.value);
  const stepper = await loadStepper(options.experiment, { ...options, model_name_or_path: model });

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
    const result = await evaluatePerplexity(stepper, samples(), {
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

/** `attention-sinks perplexity`: the StreamingLLM perplexity benchmark, one experiment per run. */
import type { CsvLogWriter } from "../../perplexity/csv.js";
import { runPerplexity } from "../../perplexity/run.js";
import { flags } from "../args.js";
import { defineCommand } from "../command.js";
import { CACHE_FLAGS, EXPERIMENT_FLAG, loadUsageError, MODEL_FLAG, reportConversion, requiredString, RUNTIME_FLAGS, runtimeOptions } from "../model_flags.js";
import { ProgressBar } from "../progress.js";
import { handleInterrupts, type InterruptHandler } from "../signals.js";

const spec = {
  name: "perplexity",
  summary: "Measure per-token perplexity, memory and latency of one experiment over a long text, into {output_dir}/{experiment}.csv.",
  flags: flags({
    ...EXPERIMENT_FLAG,
    ...MODEL_FLAG,
    revision: { type: "string", default: "main", description: "model revision, for Hub models" },
    trust_remote_code: { type: "boolean", description: "accepted for compatibility with the Python benchmark: transformers.js runs no model code" },
    dataset_name: {
      type: "string",
      metavar: "DATASET",
      default: "emozilla/pg19-test",
      description: "a .txt file (one sample), .jsonl/.json/.parquet file or folder, or a Hub dataset id (needs the Hub)",
    },
    data_column: { type: "string", default: "text", description: "the text column of jsonl, json and parquet rows" },
    task: { type: "string", description: "the dataset configuration (Hub) or subfolder (local folder)" },
    split: { type: "string", default: "test", description: "the dataset split (Hub), or the files named after it in a folder" },
    num_tokens: { type: "integer", min: 1, default: 8192, description: "tokens to evaluate" },
    num_samples: { type: "integer", min: 1, default: 1, description: "dataset samples to stream, one after the other" },
    output_dir: { type: "string", metavar: "DIR", default: "benchmark/outputs", description: "where {experiment}.csv is written" },
    overwrite: { type: "boolean", description: "replace an existing {experiment}.csv" },
    ...CACHE_FLAGS,
    ...RUNTIME_FLAGS,
  }),
  examples: [
    "attention-sinks perplexity --experiment attention_sinks --model_name_or_path ../shared/models/tinystories-656k \\\n" +
      "    --dataset_name ../shared/data/tinystories_valid.txt --num_tokens 4096 --window_size 256",
    "attention-sinks perplexity --model_name_or_path ../shared/models/stories260K/stories260K.v1.gguf --backend llama.cpp \\\n" +
      "    --dataset_name ../shared/data/tinystories_valid.txt --num_tokens 2048 --window_size 64",
  ],
};

export const perplexityCommand = defineCommand(spec, async ({ flags: values }) => {
  const model = requiredString(values.model_name_or_path, "model_name_or_path");
  const { experiment, num_tokens } = values;
  const controller = new AbortController();
  let writer: CsvLogWriter | null = null;
  let interrupts: InterruptHandler | null = null;
  // Read through functions: the handler is installed from a callback, which narrowing does not follow.
  const stoppedBy = () => interrupts?.exitCode ?? null;
  const uninstallSignals = () => interrupts?.uninstall();
  const progress = new ProgressBar(experiment, num_tokens);
  try {
    const result = await runPerplexity(
      {
        experiment,
        model_name_or_path: model,
        tokenizer: values.tokenizer,
        onConvert: reportConversion,
        revision: values.revision,
        ...runtimeOptions(values),
        attention_sink_size: values.attention_sink_size,
        attention_sink_window_size: values.attention_sink_window_size,
        window_size: values.window_size,
        dataset_name: values.dataset_name,
        data_column: values.data_column,
        task: values.task,
        split: values.split,
        num_tokens,
        num_samples: values.num_samples,
        output_dir: values.output_dir,
        overwrite: values.overwrite,
      },
      {
        signal: controller.signal,
        // Until the CSV exists a signal has nothing to save, and ends the process as usual. Then the first
        // signal finishes the token in flight and closes the CSV; a second flushes it and leaves at once.
        onCsv: (csv) => {
          writer = csv;
          interrupts = handleInterrupts(
            (signal) => {
              controller.abort();
              process.stderr.write(`\n${signal}: stopping after the current token (again to stop at once)\n`);
            },
            () => writer?.flush(),
          );
        },
        onToken: (record) => progress.update(record),
      },
    );
    progress.finish();
    const stopped = stoppedBy();
    if (result.tokens > 0) {
      process.stdout.write(
        `${experiment}: ${result.tokens} tokens, overall perplexity ${result.overall_ppl.toFixed(3)}, ` +
          `${(result.tokens / result.seconds).toFixed(1)} tokens/s; wrote ${result.csv}\n`,
      );
    } else if (stopped === null) {
      throw new Error("no token was evaluated: the dataset's samples have fewer than 2 tokens");
    }
    return stopped ?? 0;
  } catch (error) {
    throw loadUsageError(values, error);
  } finally {
    uninstallSignals();
  }
});

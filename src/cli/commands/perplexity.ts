/** `attention-sinks perplexity`: the StreamingLLM perplexity benchmark, one experiment per run. */
import type { PretrainedModelOptions } from "@huggingface/transformers";
import { AttentionSinkOptionError } from "../../cache/options.js";
import { EXPERIMENTS, type Experiment } from "../../perplexity/experiments.js";
import type { CsvLogWriter } from "../../perplexity/csv.js";
import { ProgressBar } from "../progress.js";
import { runPerplexity } from "../../perplexity/run.js";
import { UsageError, type CommandSpec, type ParsedArgs } from "../args.js";
import type { Command } from "../command.js";
import { DEVICES, DTYPES } from "../model_flags.js";

/** Exit codes of a run stopped by a signal, as a shell reports them (128 + signal number). */
const SIGNAL_EXIT: Record<"SIGINT" | "SIGTERM", number> = { SIGINT: 130, SIGTERM: 143 };

const spec: CommandSpec = {
  name: "perplexity",
  summary: "Measure per-token perplexity, memory and latency of one experiment over a long text, into {output_dir}/{experiment}.csv.",
  flags: {
    experiment: {
      type: "string",
      choices: EXPERIMENTS,
      default: "attention_sinks",
      description: "attention_sinks: sinks + recent tokens; windowed: the window_size most recent tokens; transformers: plain transformers.js, full cache",
    },
    model_name_or_path: { type: "string", metavar: "MODEL", description: "model directory, convertible checkpoint or Hub id (required)" },
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
    window_size: { type: "integer", min: 1, default: 1024, description: "tokens attention sees at most (sinks included) in attention_sinks and windowed" },
    attention_sink_size: { type: "integer", min: 0, default: 4, description: "sink tokens of the attention_sinks experiment" },
    dtype: { type: "string", choices: DTYPES, default: "fp32", description: "model weights to load" },
    device: { type: "string", choices: DEVICES, default: "cpu", description: "onnxruntime execution provider" },
  },
  examples: [
    "attention-sinks perplexity --experiment attention_sinks --model_name_or_path ../shared/models/tinystories-656k \\\n" +
      "    --dataset_name ../shared/data/tinystories_valid.txt --num_tokens 4096 --window_size 256",
  ],
};

async function run(args: ParsedArgs): Promise<number> {
  const flags = args.flags;
  const model = flags.model_name_or_path as string | undefined;
  if (!model) throw new UsageError("--model_name_or_path is required");
  const experiment = flags.experiment as Experiment;
  const numTokens = flags.num_tokens as number;

  const controller = new AbortController();
  let stoppedBy: keyof typeof SIGNAL_EXIT | null = null;
  let writer: CsvLogWriter | null = null;
  // First signal: finish the token in flight, then close the CSV. Second: flush and leave at once.
  const onSignal = (signal: keyof typeof SIGNAL_EXIT) => {
    if (stoppedBy) {
      writer?.flush();
      process.exit(SIGNAL_EXIT[signal]);
    }
    stoppedBy = signal;
    controller.abort();
    process.stderr.write(`\n${signal}: stopping after the current token (again to stop at once)\n`);
  };
  const handlers = { SIGINT: () => onSignal("SIGINT"), SIGTERM: () => onSignal("SIGTERM") };

  const progress = new ProgressBar(experiment, numTokens);
  try {
    const result = await runPerplexity(
      {
        experiment,
        model_name_or_path: model,
        revision: flags.revision as string,
        dtype: flags.dtype as PretrainedModelOptions["dtype"],
        device: flags.device as PretrainedModelOptions["device"],
        window_size: flags.window_size as number,
        attention_sink_size: flags.attention_sink_size as number,
        dataset_name: flags.dataset_name as string,
        data_column: flags.data_column as string,
        task: flags.task as string | undefined,
        split: flags.split as string,
        num_tokens: numTokens,
        num_samples: flags.num_samples as number,
        output_dir: flags.output_dir as string,
        overwrite: flags.overwrite === true,
      },
      {
        signal: controller.signal,
        // Until the CSV exists a signal has nothing to save, and ends the process as usual.
        onCsv: (csv) => {
          writer = csv;
          process.on("SIGINT", handlers.SIGINT);
          process.on("SIGTERM", handlers.SIGTERM);
        },
        onToken: (record) => progress.update(record),
      },
    );
    progress.finish();
    if (result.tokens > 0) {
      process.stdout.write(
        `${experiment}: ${result.tokens} tokens, overall perplexity ${result.overall_ppl.toFixed(3)}, ` +
          `${(result.tokens / result.seconds).toFixed(1)} tokens/s; wrote ${result.csv}\n`,
      );
    } else if (!stoppedBy) {
      throw new Error("no token was evaluated: the dataset's samples have fewer than 2 tokens");
    }
    return stoppedBy ? SIGNAL_EXIT[stoppedBy] : 0;
  } catch (error) {
    if (error instanceof AttentionSinkOptionError) {
      throw new UsageError(`--window_size ${flags.window_size} with --attention_sink_size ${flags.attention_sink_size}: ${error.message}`);
    }
    throw error;
  } finally {
    process.off("SIGINT", handlers.SIGINT);
    process.off("SIGTERM", handlers.SIGTERM);
  }
}

export const perplexityCommand: Command = { spec, run };

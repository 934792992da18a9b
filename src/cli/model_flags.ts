/**
 * The flags every command that streams a model shares, declared once, and how they become a backend: the
 * model, the experiment, the cache size in either convention, sampling, dtype and device.
 */
import type { DataType, DeviceType } from "@huggingface/transformers";
import type { StreamingBackend } from "../backend/backend.js";
import { EXPERIMENTS } from "../backend/experiments.js";
import { AttentionSinkOptionError } from "../cache/options.js";
import type { SamplingOptions } from "../generation/decoding.js";
import { loadTransformersBackend, type BackendLoadOptions } from "../transformers/backend.js";
import { flags, UsageError, type FlagValues } from "./args.js";

export const DTYPES = ["auto", "fp32", "fp16", "q8", "int8", "uint8", "q4", "bnb4", "q4f16"] as const satisfies readonly DataType[];
/** The devices onnxruntime-node offers (wasm is the browser build's). */
export const DEVICES = ["auto", "cpu", "gpu", "cuda", "dml", "coreml", "webgpu"] as const satisfies readonly DeviceType[];

export const MODEL_FLAG = flags({
  model_name_or_path: {
    type: "string",
    metavar: "PATH",
    description: "the model: a transformers.js model directory, a checkpoint the package converts, or a Hub id (required)",
  },
  tokenizer: { type: "string", metavar: "FILE", description: "the tokenizer.bin of a llama2.c checkpoint (default: the one beside it)" },
});

export const EXPERIMENT_FLAG = flags({
  experiment: {
    type: "string",
    choices: EXPERIMENTS,
    default: "attention_sinks",
    description:
      "attention_sinks: sinks + a window of recent tokens; windowed: no sinks, a window of the same total size; transformers: plain transformers.js, whose cache grows with every token",
  },
});

export const CACHE_FLAGS = flags({
  attention_sink_size: { type: "integer", min: 0, metavar: "N", description: "first tokens kept for ever as attention sinks (default 4)" },
  attention_sink_window_size: {
    type: "integer",
    min: 1,
    metavar: "N",
    description: "recent tokens kept after the sinks (default 1020, or less when the model's context is shorter)",
  },
  window_size: {
    type: "integer",
    min: 1,
    metavar: "N",
    description: "every token attention sees, sinks included (the other way to give the window: sink + window)",
  },
});

export const RUNTIME_FLAGS = flags({
  dtype: { type: "string", choices: DTYPES, description: "weights to load (default: transformers.js's for the device)" },
  device: { type: "string", choices: DEVICES, description: "where onnxruntime runs the model (default cpu)" },
});

export const SAMPLING_FLAGS = flags({
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
});

/** Says on stderr that a checkpoint is being converted (its first use) and where to. */
export function reportConversion(source: string, target: string): void {
  process.stderr.write(`converting ${source} on first use into ${target}\n`);
}

type ModelFlags = FlagValues<typeof MODEL_FLAG & typeof EXPERIMENT_FLAG & typeof CACHE_FLAGS & typeof RUNTIME_FLAGS>;

export function requiredString(value: string | undefined, name: string): string {
  if (value === undefined || value === "") throw new UsageError(`--${name} is required`);
  return value;
}

/** Loads the stream the flags describe; sizes the model cannot take are usage errors naming the flags. */
export async function loadBackend(values: ModelFlags, extra: Pick<BackendLoadOptions, "revision"> = {}): Promise<StreamingBackend> {
  const model = requiredString(values.model_name_or_path, "model_name_or_path");
  try {
    return await loadTransformersBackend(model, {
      ...extra,
      experiment: values.experiment,
      attention_sink_size: values.attention_sink_size,
      attention_sink_window_size: values.attention_sink_window_size,
      window_size: values.window_size,
      dtype: values.dtype,
      device: values.device,
      tokenizer: values.tokenizer,
      onConvert: reportConversion,
    });
  } catch (error) {
    if (error instanceof AttentionSinkOptionError) throw sizeUsageError(values, error);
    throw error;
  }
}

/** An option error as the flags given would have caused it. */
export function sizeUsageError(values: Pick<ModelFlags, "window_size" | "attention_sink_size">, error: AttentionSinkOptionError): UsageError {
  if (values.window_size !== undefined) {
    if (error.limit !== undefined) {
      const { size, what, key } = error.limit;
      return new UsageError(`--window_size ${values.window_size} exceeds the ${size} ${what} (${key}); use --window_size <= ${size}`);
    }
    return new UsageError(`--window_size ${values.window_size} with --attention_sink_size ${values.attention_sink_size ?? 4}: ${error.message}`);
  }
  return new UsageError(error.message.replaceAll("attention_sink_", "--attention_sink_"));
}

/** The sampling flags, checked together. */
export function samplingOptions(values: FlagValues<typeof SAMPLING_FLAGS>): SamplingOptions {
  const { do_sample } = values;
  for (const name of ["temperature", "top_k", "top_p"] as const) {
    if (values[name] !== undefined && !do_sample) throw new UsageError(`--${name} only applies to sampling: add --do_sample`);
  }
  const { temperature = 1, top_k = 50, top_p = 1, repetition_penalty } = values;
  if (!(temperature > 0)) throw new UsageError(`--temperature must be greater than 0, got ${temperature} (greedy decoding is the default without --do_sample)`);
  if (!(top_p > 0 && top_p <= 1)) throw new UsageError(`--top_p must be in (0, 1], got ${top_p}`);
  if (!(repetition_penalty > 0)) throw new UsageError(`--repetition_penalty must be greater than 0, got ${repetition_penalty}`);
  return { do_sample, temperature, top_k, top_p, repetition_penalty };
}

/**
 * The three perplexity experiments of the StreamingLLM benchmark, each behind one small interface that feeds a
 * stream one token at a time: attention sinks, a plain sliding window (no sinks) and plain transformers.js
 * with its full, ever-growing cache.
 */
import { existsSync } from "node:fs";
import * as transformers from "@huggingface/transformers";
import { DynamicCache, Tensor, type PreTrainedModel, type PretrainedModelOptions } from "@huggingface/transformers";
import { AttentionSinkOptionError } from "../cache/options.js";
import { resolveModelSource } from "../convert/index.js";
import { AutoModelForCausalLM, type StreamingModel } from "../transformers/models.js";
import { cacheStats } from "../transformers/stream_registry.js";

export const EXPERIMENTS = ["attention_sinks", "transformers", "windowed"] as const;
export type Experiment = (typeof EXPERIMENTS)[number];

/** One stream through a model, fed token by token. */
export interface TokenStepper {
  /** Feeds one token; resolves to the logits (vocab_size floats) that predict the next one. */
  step(token: number): Promise<Float32Array>;
  /** Bytes of the keys and values attention reads now. */
  kvCacheBytes(): number;
}

export interface ExperimentOptions {
  /** A transformers.js model directory, a convertible checkpoint, or a Hub id. */
  model_name_or_path: string;
  revision?: string;
  dtype?: PretrainedModelOptions["dtype"];
  device?: PretrainedModelOptions["device"];
  /** Tokens attention sees at most (sinks included); unused by `transformers`. */
  window_size: number;
  /** Sink tokens of `attention_sinks`. */
  attention_sink_size: number;
}

/** The cache the sink experiments use: `sinks` first tokens plus the most recent `window_size - sinks`. */
export function sinkLayout(experiment: Exclude<Experiment, "transformers">, options: ExperimentOptions): { sinks: number; recent: number } {
  const sinks = experiment === "windowed" ? 0 : options.attention_sink_size;
  const recent = options.window_size - sinks;
  if (recent < 1) {
    throw new AttentionSinkOptionError(`window_size (${options.window_size}) must be larger than attention_sink_size (${sinks})`);
  }
  return { sinks, recent };
}

/** What transformers.js loads for a model name (see resolveModelSource), and whether it is on disk. */
export async function resolveModelPath(nameOrPath: string): Promise<{ path: string; local: boolean }> {
  const path = await resolveModelSource(nameOrPath);
  return { path, local: existsSync(path) };
}

function loadingOptions(options: ExperimentOptions, local: boolean): PretrainedModelOptions {
  return {
    ...(options.revision === undefined ? {} : { revision: options.revision }),
    ...(options.dtype === undefined ? {} : { dtype: options.dtype }),
    ...(options.device === undefined ? {} : { device: options.device }),
    ...(local ? { local_files_only: true } : {}),
  };
}

/** The model as plain transformers.js loads it. */
export async function loadPlainModel(options: ExperimentOptions): Promise<PreTrainedModel> {
  const { path, local } = await resolveModelPath(options.model_name_or_path);
  return transformers.AutoModelForCausalLM.from_pretrained(path, loadingOptions(options, local));
}

/** The model with the attention-sink cache of `experiment`. */
export async function loadSinkModel(experiment: Exclude<Experiment, "transformers">, options: ExperimentOptions): Promise<StreamingModel> {
  const { sinks, recent } = sinkLayout(experiment, options);
  const { path, local } = await resolveModelPath(options.model_name_or_path);
  return AutoModelForCausalLM.from_pretrained(path, { ...loadingOptions(options, local), attention_sink_size: sinks, attention_sink_window_size: recent });
}

/** Loads the model of `experiment` and starts an empty stream on it. */
export async function loadStepper(experiment: Experiment, options: ExperimentOptions): Promise<TokenStepper> {
  return experiment === "transformers"
    ? new FullCacheStepper(await loadPlainModel(options))
    : new SinkCacheStepper(await loadSinkModel(experiment, options));
}

function tokenTensor(token: number): Tensor {
  return new Tensor("int64", BigInt64Array.of(BigInt(token)), [1, 1]);
}

/** The attention-sink cache: positions are assigned inside the cache, which stays bounded. */
export class SinkCacheStepper implements TokenStepper {
  private readonly cache = new DynamicCache();

  constructor(private readonly model: StreamingModel) {}

  async step(token: number): Promise<Float32Array> {
    const out = await this.model.forward({ input_ids: tokenTensor(token), past_key_values: this.cache });
    return out.logits.data as Float32Array;
  }

  kvCacheBytes(): number {
    return cacheStats(this.cache).kv_cache_bytes;
  }
}

/** Plain transformers.js: every token stays in the cache, at its absolute position. */
export class FullCacheStepper implements TokenStepper {
  private readonly cache = new DynamicCache();
  private readonly layers: number;
  private length = 0;

  constructor(private readonly model: PreTrainedModel) {
    this.layers = countLayers(model);
  }

  async step(token: number): Promise<Float32Array> {
    const attention_mask = new Tensor("int64", new BigInt64Array(this.length + 1).fill(1n), [1, this.length + 1]);
    const out = (await this.model.forward({ input_ids: tokenTensor(token), attention_mask, past_key_values: this.cache })) as Record<string, Tensor>;
    const presents: Record<string, Tensor> = {};
    for (let i = 0; i < this.layers; i++) {
      for (const part of ["key", "value"]) presents[`past_key_values.${i}.${part}`] = out[`present.${i}.${part}`];
    }
    this.cache.update(presents);
    this.length++;
    return out.logits.data as Float32Array;
  }

  kvCacheBytes(): number {
    return cacheStats(this.cache).kv_cache_bytes;
  }

}

/** Decoder layers, counted from the session's `past_key_values.{i}.key` inputs. */
function countLayers(model: PreTrainedModel): number {
  const session = (model.sessions as Record<string, { inputNames: readonly string[] }>).model;
  if (!session) throw new Error(`${model.constructor.name} is not a decoder with one "model" session`);
  return session.inputNames.filter((name) => /^past_key_values\.\d+\.key$/.test(name)).length;
}

/**
 * Loading a model and its tokenizer for one of the benchmark's three experiments: `attention_sinks` (sinks +
 * window), `windowed` (no sinks, a window of the same total size) and `transformers` (plain transformers.js:
 * a dense cache that grows with every token).
 */
import * as transformers from "@huggingface/transformers";
import type { DataType, DeviceType, PreTrainedModel, PreTrainedTokenizer } from "@huggingface/transformers";
import { resolveModelPath, type Experiment } from "../perplexity/experiments.js";
import { DEFAULT_ATTENTION_SINK_SIZE, DEFAULT_ATTENTION_SINK_WINDOW_SIZE } from "../cache/options.js";
import type { ModelConfig } from "../positions/families.js";
import { resolveStreamingPolicy, type AttentionSinkSettings } from "../cache/streaming_policy.js";
import { decoderInputs, decoderSession } from "../transformers/decoder_contract.js";
import { enableAttentionSinks } from "../transformers/enable.js";

export interface LoadOptions {
  experiment: Experiment;
  /** Sinks of `attention_sinks`; `windowed` keeps their slots as window (default 4). */
  attention_sink_size?: number;
  /** Default: 1020, or what the model's context leaves after the sinks when that is less. */
  attention_sink_window_size?: number;
  dtype?: DataType;
  device?: DeviceType;
}

export interface LoadedModel {
  model: PreTrainedModel;
  tokenizer: PreTrainedTokenizer;
  /** The cache the model streams through; null for `transformers`. */
  attention_sinks: AttentionSinkSettings | null;
  /** sink + window: what the cache attends at most (for `transformers`, what it would attend with sinks). */
  window_tokens: number;
}

export async function loadForGeneration(nameOrPath: string, options: LoadOptions): Promise<LoadedModel> {
  const { path, local } = await resolveModelPath(nameOrPath);
  const files = local ? { local_files_only: true } : {};
  const tokenizer = await transformers.AutoTokenizer.from_pretrained(path, files);
  const model = await transformers.AutoModelForCausalLM.from_pretrained(path, { ...files, dtype: options.dtype, device: options.device });
  const sinks = options.attention_sink_size ?? DEFAULT_ATTENTION_SINK_SIZE;
  if (options.experiment === "transformers") {
    const window = options.attention_sink_window_size ?? DEFAULT_ATTENTION_SINK_WINDOW_SIZE;
    return { model, tokenizer, attention_sinks: null, window_tokens: sinks + window };
  }
  const window =
    options.attention_sink_window_size ??
    resolveStreamingPolicy(model.config as unknown as ModelConfig, { attention_sink_size: sinks }, decoderInputs(decoderSession(model))).settings.window_size;
  const streaming = enableAttentionSinks(
    model,
    options.experiment === "windowed"
      ? { attention_sink_size: 0, attention_sink_window_size: sinks + window }
      : { attention_sink_size: sinks, attention_sink_window_size: window },
  );
  return { model, tokenizer, attention_sinks: streaming.attention_sinks, window_tokens: streaming.attention_sinks.capacity };
}

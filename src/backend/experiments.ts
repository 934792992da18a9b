/**
 * The three ways of running a stream, as the StreamingLLM benchmark compares them, defined once for every
 * command and backend: `attention_sinks` (sinks + a window of recent tokens), `windowed` (no sinks, a window
 * of the same total size) and `transformers` (a dense cache that grows with every token).
 */
import { AttentionSinkOptionError, DEFAULT_ATTENTION_SINK_SIZE, type AttentionSinkOptions } from "../cache/options.js";

export const EXPERIMENTS = ["attention_sinks", "transformers", "windowed"] as const;
export type Experiment = (typeof EXPERIMENTS)[number];

/**
 * The cache's size, in either convention: `attention_sink_window_size` counts the recent tokens after the
 * sinks (as the Python package's option does), `window_size` every token attention sees, sinks included (as
 * the Python benchmark's flag does). Give one or the other; without either, the model's default applies.
 */
export interface CacheSizes {
  attention_sink_size?: number;
  attention_sink_window_size?: number;
  window_size?: number;
}

export interface ExperimentCache {
  /** The sink options to stream with; null for `transformers`. */
  sink_options: AttentionSinkOptions | null;
  /** sink + window: the most tokens attention sees (for `transformers`, what it would see with sinks). */
  window_tokens: number;
}

/**
 * The cache of an experiment.
 * @param defaultWindow the model's default recent window for a sink count (used when no size is given).
 */
export function experimentCache(experiment: Experiment, sizes: CacheSizes, defaultWindow: (sinks: number) => number): ExperimentCache {
  const sinks = sizes.attention_sink_size ?? DEFAULT_ATTENTION_SINK_SIZE;
  const { window_size, attention_sink_window_size } = sizes;
  if (window_size !== undefined && attention_sink_window_size !== undefined && window_size !== sinks + attention_sink_window_size) {
    throw new AttentionSinkOptionError(
      `window_size (${window_size}) counts the sinks and attention_sink_window_size (${attention_sink_window_size}) does not: ` +
        `they disagree with attention_sink_size ${sinks}; give only one`,
    );
  }
  // A windowed cache has no sinks: its window is all of window_size.
  if (window_size !== undefined && window_size - sinks < 1 && experiment !== "windowed") {
    throw new AttentionSinkOptionError(`window_size (${window_size}) must be larger than attention_sink_size (${sinks})`);
  }
  const recent = window_size !== undefined ? window_size - sinks : (attention_sink_window_size ?? defaultWindow(sinks));
  const window_tokens = window_size ?? sinks + recent;
  const sink_options: AttentionSinkOptions | null =
    experiment === "transformers"
      ? null
      : experiment === "windowed"
        ? { attention_sink_size: 0, attention_sink_window_size: window_tokens }
        : { attention_sink_size: sinks, attention_sink_window_size: recent };
  return { sink_options, window_tokens };
}

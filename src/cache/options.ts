/**
 * The two StreamingLLM options (named as in the Python `attention_sinks`) and their validation.
 */

export interface AttentionSinkOptions {
  /** The first tokens of the stream, kept for ever (default 4; 0 gives plain window attention). */
  attention_sink_size?: number;
  /**
   * The most recent tokens kept after the sinks. Default 1020, or less on models that address fewer
   * positions: what fits with room for `attention_sink_compaction_interval` evicted slots.
   */
  attention_sink_window_size?: number;
  /**
   * Advanced: how many evicted slots may stay in the buffers (masked out) before they are compacted away.
   * Larger trades a little attention work for fewer copies; 0 compacts on every eviction, which keeps the
   * buffers exactly `sink + window` long. Default: min(64, (sink + window) / 16), never past the positions
   * the model can address.
   */
  attention_sink_compaction_interval?: number;
}

export const DEFAULT_ATTENTION_SINK_SIZE = 4;
export const DEFAULT_ATTENTION_SINK_WINDOW_SIZE = 1020;
const MAX_DEFAULT_COMPACTION_INTERVAL = 64;

export interface SinkPolicy {
  sink_size: number;
  window_size: number;
  /** sink_size + window_size: the most tokens attention ever sees. */
  capacity: number;
  compaction_interval: number;
}

function defaultCompactionInterval(capacity: number): number {
  return Math.min(MAX_DEFAULT_COMPACTION_INTERVAL, Math.max(1, Math.floor(capacity / 16)));
}

export class AttentionSinkOptionError extends RangeError {
  override name = "AttentionSinkOptionError";

  constructor(
    message: string,
    /** When the cache is too large for the model: the limit it exceeds (the most tokens, sink + window, it may hold). */
    readonly limit?: { size: number; what: string; key: string },
  ) {
    super(message);
  }
}

const OPTION_NAMES = new Set<string>([
  "attention_sink_size",
  "attention_sink_window_size",
  "attention_sink_compaction_interval",
]);

/** Splits our options from the ones transformers.js receives unchanged. */
export function splitSinkOptions<T extends object>(options: T | undefined): {
  sink: AttentionSinkOptions;
  rest: Omit<T, keyof AttentionSinkOptions>;
} {
  const sink: Record<string, unknown> = {};
  const rest: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(options ?? {})) {
    (OPTION_NAMES.has(key) ? sink : rest)[key] = value;
  }
  return { sink: sink as AttentionSinkOptions, rest: rest as Omit<T, keyof AttentionSinkOptions> };
}

function integerOption(name: string, value: unknown, min: number): number {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new AttentionSinkOptionError(`${name} must be an integer, got ${typeof value === "string" ? JSON.stringify(value) : String(value)}`);
  }
  if (value < min) throw new AttentionSinkOptionError(`${name} must be at least ${min}, got ${value}`);
  return value;
}

/** What a model's positions allow the cache (see `slotRule` in src/positions). */
export interface PositionBudget {
  /** The positions the model was trained to address, or null when unbounded (ALiBi). */
  max_positions: number | null;
  /** Whether evicted slots may wait, masked, for compaction (otherwise every eviction compacts). */
  lazy_eviction: boolean;
  /** Whether masked slots use up positions (positions are slot indices), so they must fit the budget too. */
  masked_slots_use_positions: boolean;
  /**
   * The smallest sliding window the model's graph applies, in slots (null or absent: none). The graph
   * hides any slot that far behind a query, sinks first, so every slot, masked ones included, must fit in it.
   */
  sliding_window?: number | null;
}

/** One bound the model sets on the cache: on the tokens it attends, and on its slots where `counts_slots`. */
interface CacheLimit {
  size: number;
  counts_slots: boolean;
  /** The config.json key it comes from, and what it counts, for the errors. */
  key: string;
  what: string;
}

function cacheLimits(budget: PositionBudget): CacheLimit[] {
  const limits: CacheLimit[] = [];
  if (budget.max_positions !== null) {
    limits.push({ size: budget.max_positions, counts_slots: budget.masked_slots_use_positions, key: "max_position_embeddings", what: "positions this model addresses" });
  }
  if (budget.sliding_window != null) {
    limits.push({ size: budget.sliding_window, counts_slots: true, key: "sliding_window", what: "slots the sliding window of this model's graph attends" });
  }
  return limits;
}

/** Validates the options against what the model can address. */
export function resolveSinkPolicy(options: AttentionSinkOptions, budget: PositionBudget): SinkPolicy {
  const { lazy_eviction } = budget;
  const limits = cacheLimits(budget);
  const sink_size = integerOption("attention_sink_size", options.attention_sink_size ?? DEFAULT_ATTENTION_SINK_SIZE, 0);
  // The default window shrinks to fit every limit, leaving room for evicted slots to wait for compaction
  // where the limit counts them (a window filling every slot would compact on every token); an explicit
  // window is taken as given and checked.
  let defaultWindow = DEFAULT_ATTENTION_SINK_WINDOW_SIZE;
  for (const limit of limits) {
    const reserve = lazy_eviction && limit.counts_slots ? defaultCompactionInterval(limit.size) : 0;
    defaultWindow = Math.min(defaultWindow, Math.max(1, limit.size - sink_size - reserve));
  }
  const window_size = integerOption("attention_sink_window_size", options.attention_sink_window_size ?? defaultWindow, 1);
  const capacity = sink_size + window_size;
  for (const { size, key, what } of limits) {
    if (sink_size >= size) {
      throw new AttentionSinkOptionError(
        `attention_sink_size ${sink_size} leaves no room for a window in the ${size} ${what} (${key}); use attention_sink_size < ${size}`,
      );
    }
    if (capacity > size) {
      throw new AttentionSinkOptionError(
        `attention_sink_size + attention_sink_window_size = ${sink_size} + ${window_size} = ${capacity} exceeds the ` +
          `${size} ${what} (${key}); use attention_sink_window_size <= ${Math.max(1, size - sink_size)}`,
        { size, what, key },
      );
    }
  }
  const requested =
    options.attention_sink_compaction_interval === undefined
      ? defaultCompactionInterval(capacity)
      : integerOption("attention_sink_compaction_interval", options.attention_sink_compaction_interval, 0);
  let slack = lazy_eviction ? Infinity : 0;
  for (const limit of limits) if (limit.counts_slots) slack = Math.min(slack, limit.size - capacity);
  return { sink_size, window_size, capacity, compaction_interval: Math.max(0, Math.min(requested, slack)) };
}

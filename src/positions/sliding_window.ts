/**
 * Sliding-window attention that a model's own graph applies: which layers limit attention to the keys fewer
 * than `size` cache slots behind the query, read from `config.json` by a rule each family's row states.
 */

export interface SlidingWindow {
  size: number;
  /** The layers that apply it, ascending. */
  layers: readonly number[];
}

/** How a family's `config.json` says which layers slide. */
export interface SlidingWindowRule {
  /** The key of the window's size; null or absent means no window. */
  size_key: string;
  /** A boolean key that must be true for any layer to slide (Qwen2's `use_sliding_window`). */
  enabled_by?: string;
  /**
   * The layers that slide when the config has no `layer_types` list: `all`, `even` (Gemma 2: 0, 2, ...),
   * those from the layer a key names on (Qwen2's `max_window_layers`), or those a per-layer list marks
   * (GPT-Neo's `attention_layers`, "local").
   */
  layers: "all" | "even" | { from_layer_key: string } | { list_key: string; sliding: string };
}

/** transformers' per-layer list (written by transformers >= 4.53), which wins over a family's own rule. */
const LAYER_TYPES_KEY = "layer_types";
const LAYER_TYPES = ["sliding_attention", "full_attention"];

export class SlidingWindowConfigError extends Error {
  override name = "SlidingWindowConfigError";
}

/** The window a config describes for `num_layers` layers under `rule`, or null when no layer slides. */
export function slidingWindowOf(config: Readonly<Record<string, unknown>>, rule: SlidingWindowRule, num_layers: number): SlidingWindow | null {
  const fail = (message: string): never => {
    throw new SlidingWindowConfigError(`config.json: ${message}`);
  };
  const size = config[rule.size_key];
  if (size === null || size === undefined) return null;
  if (typeof size !== "number" || !Number.isInteger(size) || size < 1) fail(`${rule.size_key} is ${JSON.stringify(size)}, expected a positive integer or null`);
  if (rule.enabled_by !== undefined) {
    const enabled = config[rule.enabled_by] ?? false;
    if (typeof enabled !== "boolean") fail(`${rule.enabled_by} is ${JSON.stringify(enabled)}, expected true or false`);
    if (!enabled) return null;
  }
  const all = Array.from({ length: num_layers }, (_, i) => i);
  const marked = (key: string, sliding: string, known: readonly string[]): number[] => {
    const list = config[key];
    if (!Array.isArray(list) || list.length !== num_layers) fail(`${key} must list one entry for each of the ${num_layers} layers`);
    (list as unknown[]).forEach((kind, i) => {
      if (!known.includes(kind as string)) fail(`${key}[${i}] is ${JSON.stringify(kind)}, which attention-sinks does not know (known: ${known.join(", ")})`);
    });
    return all.filter((i) => (list as unknown[])[i] === sliding);
  };
  let layers: number[];
  if (config[LAYER_TYPES_KEY] !== undefined) {
    layers = marked(LAYER_TYPES_KEY, "sliding_attention", LAYER_TYPES);
  } else if (rule.layers === "all") {
    layers = all;
  } else if (rule.layers === "even") {
    layers = all.filter((i) => i % 2 === 0);
  } else if ("from_layer_key" in rule.layers) {
    const from = config[rule.layers.from_layer_key] ?? 0;
    if (typeof from !== "number" || !Number.isInteger(from) || from < 0) fail(`${rule.layers.from_layer_key} is ${JSON.stringify(from)}, expected a layer index`);
    layers = all.filter((i) => i >= (from as number));
  } else {
    layers = marked(rule.layers.list_key, rule.layers.sliding, ["global", rule.layers.sliding]);
  }
  return layers.length > 0 ? { size: size as number, layers } : null;
}

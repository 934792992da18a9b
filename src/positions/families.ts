/**
 * Model families as rows of data: how each `model_type` encodes positions and lays out its KV cache.
 * Everything the sink cache needs to know about a model comes from its row plus its `config.json`.
 */
import { ropeInverseFrequencies, ropeValuesProblem, type RopeLayout, type RopeScaling, type RopeSpec } from "./rope.js";
import { slidingWindowOf, SlidingWindowConfigError, type SlidingWindow, type SlidingWindowRule } from "./sliding_window.js";

export interface FamilyRow {
  positions: "rope" | "alibi" | "learned";
  /** For RoPE families: which coordinates pair up. */
  rope_layout?: RopeLayout;
  /** For ALiBi families: whether distances count attended slots only (`mask_cumsum`) or every slot. */
  alibi_positions?: "mask_cumsum" | "key_index";
  /** A boolean config path that, when true, switches a RoPE family to ALiBi (Falcon's `alibi`). */
  alibi_flag?: string;
  /** A boolean config path that, when false, switches an ALiBi family to learned positions (MPT). */
  alibi_disabled_flag?: string;
  /** Where the family's graph applies a sliding window of its own, and how the config says so. */
  sliding_window?: SlidingWindowRule;
  /**
   * Falcon: `multi_query` (one KV head) takes this default when the config omits it, as in transformers, and
   * gives way to the `unless` flag (`new_decoder_architecture`, which reads the KV head count instead).
   */
  multi_query?: { default: boolean; unless: string };
}

const rope = (rope_layout: RopeLayout, extra: Partial<FamilyRow> = {}): FamilyRow => ({ positions: "rope", rope_layout, ...extra });
const learned: FamilyRow = { positions: "learned" };
const everyLayer: SlidingWindowRule = { size_key: "sliding_window", layers: "all" };
/** Qwen: only with `use_sliding_window`, and only from layer `max_window_layers` on. */
const qwenWindow: SlidingWindowRule = { size_key: "sliding_window", enabled_by: "use_sliding_window", layers: { from_layer_key: "max_window_layers" } };

/**
 * Supported families. Every row uses the transformers.js cache layout
 * `past_key_values.{i}.key/value` of shape [batch, kv_heads, seq, head_dim].
 */
export const FAMILIES: Readonly<Record<string, FamilyRow>> = {
  llama: rope("rotate_half"),
  mistral: rope("rotate_half", { sliding_window: everyLayer }),
  qwen2: rope("rotate_half", { sliding_window: qwenWindow }),
  qwen3: rope("rotate_half", { sliding_window: qwenWindow }),
  gemma: rope("rotate_half"),
  gemma2: rope("rotate_half", { sliding_window: { size_key: "sliding_window", layers: "even" } }),
  olmo: rope("rotate_half"),
  olmo2: rope("rotate_half"),
  granite: rope("rotate_half"),
  starcoder2: rope("rotate_half", { sliding_window: everyLayer }),
  stablelm: rope("rotate_half"),
  phi: rope("rotate_half"),
  phi3: rope("rotate_half", { sliding_window: everyLayer }),
  gpt_neox: rope("rotate_half"),
  exaone: rope("rotate_half"),
  gptj: rope("interleaved"),
  codegen: rope("interleaved"),
  cohere: rope("interleaved"),
  falcon: rope("rotate_half", {
    alibi_flag: "alibi",
    alibi_positions: "mask_cumsum",
    multi_query: { default: true, unless: "new_decoder_architecture" },
  }),
  bloom: { positions: "alibi", alibi_positions: "mask_cumsum" },
  mpt: { positions: "alibi", alibi_positions: "key_index", alibi_disabled_flag: "attn_config.alibi" },
  gpt2: learned,
  gpt_neo: { ...learned, sliding_window: { size_key: "window_size", layers: { list_key: "attention_layers", sliding: "local" } } },
  opt: learned,
};

export const SUPPORTED_MODEL_TYPES: readonly string[] = Object.keys(FAMILIES).sort();

/** The positional scheme of one loaded model, resolved from its family row and config. */
export type PositionScheme =
  | { kind: "rope"; rope: RopeSpec; inverse_frequencies: Float32Array }
  | { kind: "alibi"; positions: "mask_cumsum" | "key_index" }
  | { kind: "learned" };

export interface ModelGeometry {
  model_type: string;
  num_layers: number;
  num_kv_heads: number;
  head_dim: number;
  /** The largest position the model was trained to address (null when unbounded, as with ALiBi). */
  max_positions: number | null;
  scheme: PositionScheme;
  /** The sliding window the model's graph applies, or null. */
  sliding_window: SlidingWindow | null;
}

/** A transformers `config.json`, read loosely: only the keys below are consulted. */
export type ModelConfig = Readonly<Record<string, unknown>>;

export class UnsupportedModelError extends Error {
  override name = "UnsupportedModelError";
}

function lookup(config: ModelConfig, path: string): unknown {
  let value: unknown = config;
  for (const key of path.split(".")) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<string, unknown>)[key];
  }
  return value;
}

/** A config value for messages: strings quoted, so `"4"` is told apart from 4. */
function shown(value: unknown): string {
  return typeof value === "number" ? String(value) : JSON.stringify(value);
}

/**
 * The value of the first of `keys` the config sets (null counts as unset). A key that is set must hold a
 * finite number: a string such as `"4"` or an overflowing `1e400` is refused by name rather than skipped,
 * which would silently fall back to another key or a default.
 */
function firstNumber(config: ModelConfig, keys: readonly string[]): number | undefined {
  for (const key of keys) {
    const value = lookup(config, key);
    if (value === undefined || value === null) continue;
    if (typeof value !== "number" || !Number.isFinite(value)) {
      throw new UnsupportedModelError(`${key} is ${shown(value)}, expected a finite number`);
    }
    return value;
  }
  return undefined;
}

/** As {@link firstNumber}, for a count: a positive integer. */
function firstCount(config: ModelConfig, keys: readonly string[]): number | undefined {
  for (const key of keys) {
    const value = firstNumber(config, [key]);
    if (value === undefined) continue;
    if (!Number.isInteger(value) || value < 1) throw new UnsupportedModelError(`${key} is ${value}, expected a positive integer`);
    return value;
  }
  return undefined;
}

function requireCount(config: ModelConfig, keys: readonly string[], what: string): number {
  const value = firstCount(config, keys);
  if (value === undefined) {
    throw new UnsupportedModelError(`the config has no ${what} (looked for ${keys.join(", ")})`);
  }
  return value;
}

/** The keys each RoPE scaling type may carry, besides its type, as transformers validates them. */
const ROPE_SCALING_KEYS: Readonly<Record<string, readonly string[]>> = {
  default: [],
  linear: ["factor"],
  dynamic: ["factor", "original_max_position_embeddings"],
  llama3: ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
  yarn: ["factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate"],
  longrope: ["short_factor", "long_factor", "factor", "original_max_position_embeddings", "attention_factor"],
};
/** Keys any type may carry: its name, and what transformers >= 4.56 keeps beside it in `rope_parameters`. */
const ROPE_COMMON_KEYS = ["rope_type", "type", "rope_theta", "partial_rotary_factor"];

/**
 * Reads `rope_parameters` (transformers >= 4.56) or `rope_scaling`, normalised to {@link RopeScaling}; a type or
 * key the package does not know is refused by name, since ignoring it would rotate keys wrongly.
 */
function readRopeScaling(config: ModelConfig, maxPositions: number | null, positionsInUse: number): RopeScaling | undefined {
  const source = lookup(config, "rope_parameters") != null ? "rope_parameters" : "rope_scaling";
  const raw = lookup(config, source) as Record<string, unknown> | null | undefined;
  if (!raw || typeof raw !== "object") return undefined;
  const typeKey = raw.rope_type !== undefined ? "rope_type" : "type";
  const type = String(raw[typeKey] ?? "default");
  const known = ROPE_SCALING_KEYS[type];
  if (!known) {
    throw new UnsupportedModelError(
      `${source}.${typeKey} "${type}" is not supported (supported: ${Object.keys(ROPE_SCALING_KEYS).filter((t) => t !== "default").join(", ")})`,
    );
  }
  for (const key of Object.keys(raw)) {
    if (!known.includes(key) && !ROPE_COMMON_KEYS.includes(key)) {
      throw new UnsupportedModelError(
        `${source}.${key} is not understood by attention-sinks for rope type "${type}" (it reads: ${[typeKey, ...known].join(", ")})`,
      );
    }
  }
  const num = (key: string, fallback?: number): number => {
    const value = raw[key] ?? fallback;
    if (value === undefined) throw new UnsupportedModelError(`${source}.${key}: rope scaling "${type}" needs a number, which is missing`);
    if (typeof value !== "number") throw new UnsupportedModelError(`${source}.${key}: rope scaling "${type}" needs a number, not ${shown(value)}`);
    return value;
  };
  const original = () => num("original_max_position_embeddings", firstNumber(config, ["original_max_position_embeddings"]) ?? maxPositions ?? undefined);
  switch (type) {
    case "default":
      return undefined;
    case "linear":
      return { rope_type: "linear", factor: num("factor") };
    case "dynamic":
      return { rope_type: "dynamic", factor: num("factor") };
    case "llama3":
      return {
        rope_type: "llama3",
        factor: num("factor"),
        low_freq_factor: num("low_freq_factor"),
        high_freq_factor: num("high_freq_factor"),
        original_max_position_embeddings: original(),
      };
    case "yarn": {
      const optional = (key: string) => (typeof raw[key] === "number" ? (raw[key] as number) : undefined);
      return {
        rope_type: "yarn",
        factor: num("factor"),
        original_max_position_embeddings: original(),
        beta_fast: optional("beta_fast"),
        beta_slow: optional("beta_slow"),
        attention_factor: optional("attention_factor"),
        mscale: optional("mscale"),
        mscale_all_dim: optional("mscale_all_dim"),
        truncate: typeof raw.truncate === "boolean" ? raw.truncate : undefined,
      };
    }
    case "longrope": {
      const short = raw.short_factor;
      const long = raw.long_factor;
      if (!Array.isArray(short) || !Array.isArray(long)) {
        throw new UnsupportedModelError(`${source}.short_factor and long_factor: rope scaling "longrope" needs both as arrays`);
      }
      const originalMax = original();
      return {
        rope_type: "longrope",
        short_factor: short.map(Number),
        long_factor: long.map(Number),
        original_max_position_embeddings: originalMax,
        factor: typeof raw.factor === "number" ? raw.factor : (maxPositions ?? originalMax) / originalMax,
        attention_factor: typeof raw.attention_factor === "number" ? raw.attention_factor : undefined,
        use_long_factor: positionsInUse > originalMax,
      };
    }
  }
  return undefined;
}

/**
 * Resolves a model's geometry and positional scheme from its config.
 * @param positionsInUse the largest position count the cache will ever give the model (longrope picks its
 * factors by it, as transformers does by sequence length).
 */
export function resolveGeometry(config: ModelConfig, positionsInUse = 0): ModelGeometry {
  if (config.model_type === undefined || config.model_type === null) {
    throw new UnsupportedModelError(`the config has no model_type. Supported model types: ${SUPPORTED_MODEL_TYPES.join(", ")}`);
  }
  const model_type = String(config.model_type);
  const row = Object.hasOwn(FAMILIES, model_type) ? FAMILIES[model_type] : undefined;
  if (!row) {
    throw new UnsupportedModelError(
      `model_type "${model_type}" is not supported by attention-sinks. Supported model types: ${SUPPORTED_MODEL_TYPES.join(", ")}`,
    );
  }
  const num_heads = requireCount(config, ["num_attention_heads", "n_head", "n_heads", "num_heads"], "attention head count");
  const multiQuery =
    row.multi_query !== undefined &&
    lookup(config, row.multi_query.unless) !== true &&
    (lookup(config, "multi_query") ?? row.multi_query.default) === true;
  const num_kv_heads = multiQuery ? 1 : (firstCount(config, ["num_key_value_heads", "num_kv_heads", "attn_config.kv_n_heads"]) ?? num_heads);
  const hidden = firstCount(config, ["hidden_size", "n_embd", "d_model"]);
  const head_dim = firstCount(config, ["head_dim"]) ?? (hidden !== undefined ? hidden / num_heads : NaN);
  if (!Number.isInteger(head_dim) || head_dim <= 0) {
    throw new UnsupportedModelError(
      hidden === undefined
        ? "the config gives no head_dim, nor a hidden_size to divide by the head count"
        : `the config gives no head_dim, and hidden_size ${hidden} is not a multiple of the ${num_heads} attention heads`,
    );
  }
  const num_layers = requireCount(config, ["num_hidden_layers", "n_layer", "n_layers", "num_layers"], "layer count");
  const max_positions = firstCount(config, ["max_position_embeddings", "n_positions", "max_seq_len", "n_ctx", "seq_length"]) ?? null;

  let positions = row.positions;
  if (row.alibi_flag && lookup(config, row.alibi_flag) === true) positions = "alibi";
  if (row.alibi_disabled_flag && lookup(config, row.alibi_disabled_flag) === false) positions = "learned";

  let scheme: PositionScheme;
  if (positions === "rope") {
    const fraction = firstNumber(config, ["partial_rotary_factor", "rotary_pct"]) ?? 1;
    const rotary_dim = firstNumber(config, ["rotary_dim"]) ?? Math.floor(head_dim * fraction);
    if (!Number.isInteger(rotary_dim) || rotary_dim <= 0 || rotary_dim % 2 !== 0 || rotary_dim > head_dim) {
      throw new UnsupportedModelError(`rotary dimension ${rotary_dim} is not an even number between 2 and head_dim ${head_dim}`);
    }
    const spec: RopeSpec = {
      layout: row.rope_layout ?? "rotate_half",
      head_dim,
      rotary_dim,
      theta: firstNumber(config, ["rope_parameters.rope_theta", "rope_theta", "rotary_emb_base"]) ?? 10000,
      scaling: readRopeScaling(config, max_positions, positionsInUse),
    };
    // The cache re-rotates keys with these values: an impossible one would turn the stream into NaN.
    const problem = ropeValuesProblem(spec.theta, spec.scaling);
    if (problem) throw new UnsupportedModelError(problem);
    scheme = { kind: "rope", rope: spec, inverse_frequencies: ropeInverseFrequencies(spec) };
  } else if (positions === "alibi") {
    scheme = { kind: "alibi", positions: row.alibi_positions ?? "mask_cumsum" };
  } else {
    scheme = { kind: "learned" };
  }
  let sliding_window: SlidingWindow | null = null;
  try {
    sliding_window = row.sliding_window ? slidingWindowOf(config, row.sliding_window, num_layers) : null;
  } catch (error) {
    if (error instanceof SlidingWindowConfigError) throw new UnsupportedModelError(error.message);
    throw error;
  }
  return {
    model_type,
    num_layers,
    num_kv_heads,
    head_dim,
    max_positions: positions === "alibi" ? null : max_positions,
    scheme,
    sliding_window,
  };
}

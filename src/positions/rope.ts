/**
 * Rotary position embeddings: frequencies (with every RoPE scaling transformers defines) and the rotation of
 * cached keys. A key rotated at position p and then by d more positions equals the key rotated at p + d,
 * which is what lets the sink cache move keys instead of recomputing them.
 */

/** Which coordinates form a rotating pair: (j, j + r/2) as in Hugging Face, or (2j, 2j + 1) as in Meta/GPT-J. */
export type RopeLayout = "rotate_half" | "interleaved";

/** RoPE scaling, as `rope_scaling` / `rope_parameters` name it in a transformers `config.json`. */
export type RopeScaling =
  | { rope_type: "linear"; factor: number }
  /** Dynamic NTK only changes frequencies past the trained length, which cache-relative positions never reach. */
  | { rope_type: "dynamic"; factor: number }
  | {
      rope_type: "llama3";
      factor: number;
      low_freq_factor: number;
      high_freq_factor: number;
      original_max_position_embeddings: number;
    }
  | {
      rope_type: "yarn";
      factor: number;
      original_max_position_embeddings: number;
      beta_fast?: number;
      beta_slow?: number;
      attention_factor?: number;
      mscale?: number;
      mscale_all_dim?: number;
      truncate?: boolean;
    }
  | {
      rope_type: "longrope";
      short_factor: readonly number[];
      long_factor: readonly number[];
      original_max_position_embeddings: number;
      /** max_position_embeddings / original_max_position_embeddings. */
      factor: number;
      attention_factor?: number;
      /** Whether the long factors apply: transformers picks them once positions pass the original length. */
      use_long_factor: boolean;
    };

export interface RopeSpec {
  layout: RopeLayout;
  /** Size of each attention head. */
  head_dim: number;
  /** The leading dimensions of each head that rotate (even, at most head_dim); the rest pass through. */
  rotary_dim: number;
  theta: number;
  scaling?: RopeScaling;
}

/**
 * What is impossible about a RoPE base and scaling, if anything: a base or factor that is not a finite
 * positive number turns every rotation (and so every re-rotated cached key) into NaN or nonsense.
 * @returns the problem, naming the field as `rope_scaling` does, or undefined when the values are usable.
 */
export function ropeValuesProblem(theta: number, scaling: RopeScaling | undefined): string | undefined {
  const positive = (name: string, value: number | undefined) =>
    value === undefined || (Number.isFinite(value) && value > 0) ? undefined : `${name} is ${value}, expected a finite positive number`;
  const finite = (name: string, value: number | undefined) =>
    value === undefined || Number.isFinite(value) ? undefined : `${name} is ${value}, expected a finite number`;
  const problems = [positive("rope_theta", theta)];
  if (scaling) {
    const type = scaling.rope_type;
    problems.push(positive(`rope_scaling.factor (${type})`, scaling.factor));
    if (type === "llama3") {
      problems.push(positive("rope_scaling.low_freq_factor", scaling.low_freq_factor), positive("rope_scaling.high_freq_factor", scaling.high_freq_factor));
    }
    if (type === "llama3" || type === "yarn" || type === "longrope") {
      problems.push(positive("rope_scaling.original_max_position_embeddings", scaling.original_max_position_embeddings));
    }
    if (type === "yarn") {
      problems.push(
        finite("rope_scaling.beta_fast", scaling.beta_fast),
        finite("rope_scaling.beta_slow", scaling.beta_slow),
        positive("rope_scaling.attention_factor", scaling.attention_factor),
        finite("rope_scaling.mscale", scaling.mscale),
        finite("rope_scaling.mscale_all_dim", scaling.mscale_all_dim),
      );
    }
    if (type === "longrope") {
      problems.push(positive("rope_scaling.attention_factor", scaling.attention_factor));
      for (const name of ["short_factor", "long_factor"] as const) {
        const bad = scaling[name].findIndex((value) => !(Number.isFinite(value) && value > 0));
        if (bad >= 0) problems.push(positive(`rope_scaling.${name}[${bad}]`, scaling[name][bad]));
      }
    }
  }
  return problems.find((problem) => problem !== undefined);
}

/** The rotation frequency of each pair, as float32 values (what an exported graph holds). */
export function ropeInverseFrequencies(rope: RopeSpec): Float32Array {
  const dim = rope.rotary_dim;
  const half = dim / 2;
  const base = new Float64Array(half);
  for (let i = 0; i < half; i++) base[i] = 1 / Math.pow(rope.theta, (2 * i) / dim);
  const scaling = rope.scaling;
  let inv = base;
  if (scaling?.rope_type === "linear") {
    inv = base.map((f) => f / scaling.factor);
  } else if (scaling?.rope_type === "llama3") {
    const { factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: ctx } = scaling;
    const lowWavelen = ctx / low;
    const highWavelen = ctx / high;
    inv = base.map((f) => {
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) return f;
      if (wavelen > lowWavelen) return f / factor;
      const smooth = (ctx / wavelen - low) / (high - low);
      return (1 - smooth) * (f / factor) + smooth * f;
    });
  } else if (scaling?.rope_type === "yarn") {
    const { factor, original_max_position_embeddings: ctx } = scaling;
    // As transformers reads them (`or`): an unset or zero beta takes the default.
    const betaFast = scaling.beta_fast || 32;
    const betaSlow = scaling.beta_slow || 1;
    const correctionDim = (rotations: number) =>
      (dim * Math.log(ctx / (rotations * 2 * Math.PI))) / (2 * Math.log(rope.theta));
    let low = correctionDim(betaFast);
    let high = correctionDim(betaSlow);
    if (scaling.truncate ?? true) {
      low = Math.floor(low);
      high = Math.ceil(high);
    }
    low = Math.max(low, 0);
    high = Math.min(high, dim - 1);
    if (low === high) high += 0.001;
    inv = base.map((f, i) => {
      const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
      const extrapolation = 1 - ramp;
      return (f / factor) * (1 - extrapolation) + f * extrapolation;
    });
  } else if (scaling?.rope_type === "longrope") {
    const factors = scaling.use_long_factor ? scaling.long_factor : scaling.short_factor;
    if (factors.length !== half) {
      throw new Error(`rope_scaling: longrope factors have ${factors.length} entries, expected rotary_dim / 2 = ${half}`);
    }
    inv = base.map((f, i) => f / factors[i]);
  }
  return Float32Array.from(inv);
}

/** The magnitude that scaled RoPE variants multiply cos and sin by (1 for all others). */
export function ropeAttentionFactor(rope: RopeSpec): number {
  const scaling = rope.scaling;
  if (scaling?.rope_type === "yarn") {
    if (scaling.attention_factor !== undefined) return scaling.attention_factor;
    const mscale = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
    if (scaling.mscale && scaling.mscale_all_dim) {
      return mscale(scaling.factor, scaling.mscale) / mscale(scaling.factor, scaling.mscale_all_dim);
    }
    return mscale(scaling.factor);
  }
  if (scaling?.rope_type === "longrope") {
    if (scaling.attention_factor !== undefined) return scaling.attention_factor;
    return scaling.factor <= 1
      ? 1
      : Math.sqrt(1 + Math.log(scaling.factor) / Math.log(scaling.original_max_position_embeddings));
  }
  return 1;
}

/**
 * Rotates key rows by a fixed number of positions. Built once per distance and reused for every row, layer
 * and head, so moving keys costs four multiply-adds per rotating pair.
 */
export class KeyRotation {
  readonly cos: Float64Array;
  readonly sin: Float64Array;
  private readonly pairStride: number;
  private readonly pairStep: number;

  constructor(
    readonly rope: RopeSpec,
    inverseFrequencies: Float32Array,
    readonly distance: number,
  ) {
    const half = rope.rotary_dim / 2;
    this.cos = new Float64Array(half);
    this.sin = new Float64Array(half);
    for (let i = 0; i < half; i++) {
      const angle = distance * inverseFrequencies[i];
      this.cos[i] = Math.cos(angle);
      this.sin[i] = Math.sin(angle);
    }
    // rotate_half pairs (i, i + half); interleaved pairs (2i, 2i + 1).
    this.pairStride = rope.layout === "rotate_half" ? half : 1;
    this.pairStep = rope.layout === "rotate_half" ? 1 : 2;
  }

  /**
   * Writes `rows` consecutive head vectors from `source` (at `sourceOffset`) into `target` (at
   * `targetOffset`), rotated. Source and target may be the same array and offset.
   */
  apply(source: Float32Array, sourceOffset: number, target: Float32Array, targetOffset: number, rows: number): void {
    const { head_dim, rotary_dim } = this.rope;
    const half = rotary_dim / 2;
    const { cos, sin, pairStride, pairStep } = this;
    for (let r = 0; r < rows; r++) {
      const s = sourceOffset + r * head_dim;
      const t = targetOffset + r * head_dim;
      for (let i = 0; i < half; i++) {
        const a = i * pairStep;
        const b = a + pairStride;
        const x = source[s + a];
        const y = source[s + b];
        target[t + a] = x * cos[i] - y * sin[i];
        target[t + b] = y * cos[i] + x * sin[i];
      }
      if (source !== target || s !== t) {
        for (let d = rotary_dim; d < head_dim; d++) target[t + d] = source[s + d];
      }
    }
  }
}

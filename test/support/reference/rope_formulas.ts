/**
 * RoPE inverse frequencies and attention factor written out again from the published formulas, so the test
 * oracles do not share them with the library (`src/positions/rope.ts`): a mistake there would otherwise cancel
 * out in every comparison against the oracle.
 *
 * Each function follows the matching one in Hugging Face transformers' `modeling_rope_utils.py`
 * (`_compute_default_rope_parameters`, `_compute_linear_scaling_rope_parameters`,
 * `_compute_dynamic_ntk_parameters`, `_compute_llama3_parameters`, `_compute_yarn_parameters`,
 * `_compute_longrope_parameters`), step by step and in float64. The rotating dimension `dim` is what
 * transformers computes as `int(head_dim * partial_rotary_factor)`, i.e. the spec's `rotary_dim`: pair i
 * turns at theta^(-2i / rotary_dim) for i < rotary_dim / 2, whatever head_dim is.
 *
 * Only types come from src; no value or function does.
 */
import type { RopeScaling, RopeSpec } from "../../../src/positions/rope.js";

/** What transformers passes besides the config: only dynamic NTK reads it. */
export interface RopeFormulaContext {
  /** The sequence length the frequencies are for (transformers' `seq_len`); absent means the trained length. */
  sequence_length?: number;
  /** `config.max_position_embeddings`, which dynamic NTK needs when `sequence_length` is given. */
  max_position_embeddings?: number;
}

export interface RopeFormulaResult {
  /** One frequency per rotating pair (rotary_dim / 2), float64. */
  inverse_frequencies: Float64Array;
  /** The magnitude cos and sin are multiplied by. */
  attention_factor: number;
}

/** `torch.arange(0, dim, 2) / dim`: the exponent of theta for each pair. */
function pairExponents(dim: number): number[] {
  const exponents: number[] = [];
  for (let k = 0; k < dim; k += 2) exponents.push(k / dim);
  return exponents;
}

/** `_compute_default_rope_parameters`: 1 / base^(k / dim) for k = 0, 2, ..., dim - 2. */
function defaultParameters(base: number, dim: number): RopeFormulaResult {
  const inverse_frequencies = Float64Array.from(pairExponents(dim), (e) => 1 / Math.pow(base, e));
  return { inverse_frequencies, attention_factor: 1 };
}

/** `_compute_linear_scaling_rope_parameters`: the default frequencies divided by the factor. */
function linearParameters(base: number, dim: number, factor: number): RopeFormulaResult {
  const { inverse_frequencies, attention_factor } = defaultParameters(base, dim);
  return { inverse_frequencies: inverse_frequencies.map((f) => f / factor), attention_factor };
}

/**
 * `_compute_dynamic_ntk_parameters`: seq_len = max(seq_len, max_position_embeddings) (the trained length when
 * not given), base' = base * ((factor * seq_len / max_pos) - (factor - 1))^(dim / (dim - 2)), then the default
 * frequencies of base'. Inside the trained length base' = base.
 */
function dynamicParameters(base: number, dim: number, factor: number, context: RopeFormulaContext): RopeFormulaResult {
  const { sequence_length, max_position_embeddings } = context;
  if (sequence_length === undefined) return defaultParameters(base, dim);
  if (max_position_embeddings === undefined) {
    throw new Error("rope formulas: dynamic NTK with a sequence_length needs max_position_embeddings");
  }
  const seqLen = Math.max(sequence_length, max_position_embeddings);
  const scaledBase = base * Math.pow(factor * seqLen / max_position_embeddings - (factor - 1), dim / (dim - 2));
  return defaultParameters(scaledBase, dim);
}

/**
 * `_compute_llama3_parameters`: with wavelen = 2 pi / f, low_freq_wavelen = old_context_len / low_freq_factor
 * and high_freq_wavelen = old_context_len / high_freq_factor: wavelen < high_freq_wavelen keeps f,
 * wavelen > low_freq_wavelen gives f / factor, and in between (1 - s) f / factor + s f with
 * s = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor).
 */
function llama3Parameters(
  base: number,
  dim: number,
  scaling: Extract<RopeScaling, { rope_type: "llama3" }>,
): RopeFormulaResult {
  const { inverse_frequencies, attention_factor } = defaultParameters(base, dim);
  const factor = scaling.factor;
  const lowFreqFactor = scaling.low_freq_factor;
  const highFreqFactor = scaling.high_freq_factor;
  const oldContextLen = scaling.original_max_position_embeddings;
  const lowFreqWavelen = oldContextLen / lowFreqFactor;
  const highFreqWavelen = oldContextLen / highFreqFactor;
  const out = inverse_frequencies.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    // torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    const llama = wavelen > lowFreqWavelen ? f / factor : f;
    const isMediumFreq = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
    if (!isMediumFreq) return llama;
    const smoothFactor = (oldContextLen / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
    return ((1 - smoothFactor) * llama) / factor + smoothFactor * llama;
  });
  return { inverse_frequencies: out, attention_factor };
}

/** YaRN's `get_mscale`: 1 for scale <= 1, else 0.1 * mscale * ln(scale) + 1. */
export function yarnGetMscale(scale: number, mscale = 1): number {
  if (scale <= 1) return 1;
  return 0.1 * mscale * Math.log(scale) + 1;
}

/** YaRN's `find_correction_dim`: the dimension whose pair turns `numRotations` times over `maxPositions`. */
export function yarnFindCorrectionDim(numRotations: number, dim: number, base: number, maxPositions: number): number {
  return (dim * Math.log(maxPositions / (numRotations * 2 * Math.PI))) / (2 * Math.log(base));
}

/** YaRN's `find_correction_range`: [low, high] from beta_fast and beta_slow, floored/ceiled if truncating, clamped to [0, dim - 1]. */
export function yarnFindCorrectionRange(
  lowRot: number,
  highRot: number,
  dim: number,
  base: number,
  maxPositions: number,
  truncate: boolean,
): [number, number] {
  let low = yarnFindCorrectionDim(lowRot, dim, base, maxPositions);
  let high = yarnFindCorrectionDim(highRot, dim, base, maxPositions);
  if (truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  return [Math.max(low, 0), Math.min(high, dim - 1)];
}

/** YaRN's `linear_ramp_factor`: clamp((j - min) / (max - min), 0, 1) for j = 0 .. count - 1 (max += 0.001 if equal). */
export function yarnLinearRampFactor(min: number, max: number, count: number): number[] {
  if (min === max) max += 0.001;
  const ramp: number[] = [];
  for (let j = 0; j < count; j++) ramp.push(Math.min(1, Math.max(0, (j - min) / (max - min))));
  return ramp;
}

/** `_compute_yarn_parameters`' attention factor: given, or get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) when both are set (truthy), else get_mscale(factor). */
function yarnAttentionFactor(scaling: Extract<RopeScaling, { rope_type: "yarn" }>): number {
  if (scaling.attention_factor !== undefined) return scaling.attention_factor;
  const { factor, mscale, mscale_all_dim } = scaling;
  // Python truthiness: `if mscale and mscale_all_dim`.
  if (mscale && mscale_all_dim) return yarnGetMscale(factor, mscale) / yarnGetMscale(factor, mscale_all_dim);
  return yarnGetMscale(factor);
}

/**
 * `_compute_yarn_parameters`: pos_freqs = base^(k / dim); extrapolation 1 / pos_freqs, interpolation
 * 1 / (factor * pos_freqs); the extrapolation weight of pair j is 1 - ramp(low, high)[j] over dim // 2 pairs,
 * with [low, high] the correction range of (beta_fast, beta_slow) over original_max_position_embeddings.
 */
function yarnParameters(base: number, dim: number, scaling: Extract<RopeScaling, { rope_type: "yarn" }>): RopeFormulaResult {
  const factor = scaling.factor;
  // `config.rope_scaling.get("beta_fast") or 32`: a missing or zero beta takes the default.
  const betaFast = scaling.beta_fast || 32;
  const betaSlow = scaling.beta_slow || 1;
  const truncate = scaling.truncate ?? true;
  const [low, high] = yarnFindCorrectionRange(betaFast, betaSlow, dim, base, scaling.original_max_position_embeddings, truncate);
  const ramp = yarnLinearRampFactor(low, high, Math.floor(dim / 2));
  const inverse_frequencies = Float64Array.from(pairExponents(dim), (e, j) => {
    const posFreq = Math.pow(base, e);
    const extrapolation = 1 / posFreq;
    const interpolation = 1 / (factor * posFreq);
    const extrapolationFactor = 1 - ramp[j];
    return interpolation * (1 - extrapolationFactor) + extrapolation * extrapolationFactor;
  });
  return { inverse_frequencies, attention_factor: yarnAttentionFactor(scaling) };
}

/**
 * `_compute_longrope_parameters`: 1 / (ext_factor[j] * base^(k / dim)), ext_factor the long factors past the
 * original length and the short ones otherwise; attention factor given, or 1 for factor <= 1, else
 * sqrt(1 + ln(factor) / ln(original_max_position_embeddings)).
 */
function longropeParameters(
  base: number,
  dim: number,
  scaling: Extract<RopeScaling, { rope_type: "longrope" }>,
): RopeFormulaResult {
  const ext = scaling.use_long_factor ? scaling.long_factor : scaling.short_factor;
  const exponents = pairExponents(dim);
  if (ext.length !== exponents.length) {
    throw new Error(`rope formulas: longrope has ${ext.length} factors for ${exponents.length} pairs`);
  }
  const inverse_frequencies = Float64Array.from(exponents, (e, j) => 1 / (ext[j] * Math.pow(base, e)));
  const attention_factor =
    scaling.attention_factor ??
    (scaling.factor <= 1 ? 1 : Math.sqrt(1 + Math.log(scaling.factor) / Math.log(scaling.original_max_position_embeddings)));
  return { inverse_frequencies, attention_factor };
}

/** The inverse frequencies and attention factor transformers computes for this spec, in float64. */
export function ropeFormulas(rope: RopeSpec, context: RopeFormulaContext = {}): RopeFormulaResult {
  const dim = rope.rotary_dim;
  if (!Number.isInteger(dim) || dim < 2 || dim % 2 !== 0 || dim > rope.head_dim) {
    throw new Error(`rope formulas: rotary_dim must be even and in [2, head_dim = ${rope.head_dim}], got ${dim}`);
  }
  const base = rope.theta;
  const scaling = rope.scaling;
  switch (scaling?.rope_type) {
    case undefined:
      return defaultParameters(base, dim);
    case "linear":
      return linearParameters(base, dim, scaling.factor);
    case "dynamic":
      return dynamicParameters(base, dim, scaling.factor, context);
    case "llama3":
      return llama3Parameters(base, dim, scaling);
    case "yarn":
      return yarnParameters(base, dim, scaling);
    case "longrope":
      return longropeParameters(base, dim, scaling);
    default:
      throw new Error(`rope formulas: unknown rope_type ${(scaling as { rope_type: string }).rope_type}`);
  }
}

/** Float64 inverse frequencies (rotary_dim / 2 of them). */
export function formulaInverseFrequencies(rope: RopeSpec, context: RopeFormulaContext = {}): Float64Array {
  return ropeFormulas(rope, context).inverse_frequencies;
}

/** The cos/sin magnitude. */
export function formulaAttentionFactor(rope: RopeSpec, context: RopeFormulaContext = {}): number {
  return ropeFormulas(rope, context).attention_factor;
}

/**
 * The frequencies as an exported graph holds them: float32, each the rounding of the float64 formula value.
 * What the oracles rotate with, so they see the same angles as the graph does.
 */
export function formulaInverseFrequenciesFloat32(rope: RopeSpec, context: RopeFormulaContext = {}): Float32Array {
  return Float32Array.from(formulaInverseFrequencies(rope, context));
}

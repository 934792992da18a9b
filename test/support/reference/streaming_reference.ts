/**
 * The plain TypeScript reference forward: the test oracle for the library's sink cache.
 *
 * It implements StreamingLLM (Xiao et al. 2023) literally and shares nothing with the optimized cache: every
 * cached key is stored before any rotation and rotated afresh at its current cache index on every forward,
 * attention is computed with explicit loops in float64, and eviction is a plain array splice. It is slow
 * (O(cache) re-rotation per layer and forward) on purpose; only tiny models run through it. It models one
 * batch row without padding, where ALiBi's `mask_cumsum` and `key_index` positions coincide.
 */
import { mlpHasBias, validateDecoderSpec, weightShapes, type DecoderSpec, type DecoderWeights, type WeightTensor } from "../../../src/architecture/decoder_spec.js";
// RoPE frequencies come from the formulas written out again in the test tree, not from src/positions/rope.ts.
import { formulaAttentionFactor, formulaInverseFrequenciesFloat32 } from "./rope_formulas.js";

/** What the cache keeps. */
export interface ReferencePolicy {
  /** The first `sink_size` tokens ever fed are never evicted. */
  sink_size: number;
  /** How many of the most recent other tokens are kept; null keeps everything (a plain full cache). */
  window_size: number | null;
}

/** One cached token. */
interface CacheEntry {
  /** How many tokens were fed before this one, over the whole stream. */
  streamIndex: number;
  /** Per layer: the key projection before any position rotation (num_kv_heads * head_dim). */
  keys: Float64Array[];
  /** Per layer: the value projection (num_kv_heads * head_dim). */
  values: Float64Array[];
}

export class StreamingReference {
  private readonly entries: CacheEntry[] = [];
  private tokensFed = 0;
  /** RoPE only: pair frequencies and the magnitude cos and sin are scaled by. */
  private readonly inverseFrequencies: Float32Array | null;
  private readonly ropeMagnitude: number;
  /** ALiBi only: one slope per query head. */
  private readonly slopes: number[] | null;

  constructor(
    readonly spec: DecoderSpec,
    private readonly weights: DecoderWeights,
    readonly policy: ReferencePolicy,
  ) {
    if (!Number.isInteger(policy.sink_size) || policy.sink_size < 0) {
      throw new Error(`ReferencePolicy: sink_size must be a non-negative integer, got ${policy.sink_size}`);
    }
    if (policy.window_size !== null && (!Number.isInteger(policy.window_size) || policy.window_size < 1)) {
      throw new Error(`ReferencePolicy: window_size must be a positive integer or null, got ${policy.window_size}`);
    }
    validateDecoderSpec(spec);
    for (const [name, shape] of weightShapes(spec)) {
      const tensor = weights.get(name);
      if (!tensor) throw new Error(`StreamingReference: missing weight ${name}`);
      if (tensor.shape.join(",") !== shape.join(",") || tensor.data.length !== shape.reduce((a, b) => a * b, 1)) {
        throw new Error(`StreamingReference: weight ${name} has shape [${tensor.shape}], expected [${shape}]`);
      }
    }
    const positions = spec.positions;
    this.inverseFrequencies = positions.kind === "rope" ? formulaInverseFrequenciesFloat32(positions.rope) : null;
    this.ropeMagnitude = positions.kind === "rope" ? formulaAttentionFactor(positions.rope) : 1;
    // Falcon scales the ALiBi bias by 1/sqrt(head_dim) with the scores.
    const alibiScale = positions.kind === "alibi" && positions.scaled_by_head_dim ? 1 / Math.sqrt(spec.head_dim) : 1;
    this.slopes = positions.kind === "alibi" ? referenceAlibiSlopes(spec.num_heads).map((slope) => slope * alibiScale) : null;
  }

  /** Number of tokens in the cache (what attention sees). */
  get length(): number {
    return this.entries.length;
  }

  /** For each cache entry in cache order, how many tokens were fed before it over the whole stream. */
  get streamIndices(): number[] {
    return this.entries.map((entry) => entry.streamIndex);
  }

  /** Feeds tokens as ONE forward pass and returns the logits of each fed token (vocab_size each). */
  forward(tokens: readonly number[]): Float32Array[] {
    for (const token of tokens) {
      if (!Number.isInteger(token) || token < 0 || token >= this.spec.vocab_size) {
        throw new Error(`StreamingReference: token ${token} is outside the vocabulary [0, ${this.spec.vocab_size})`);
      }
    }
    // Check everything before evicting, so a failed forward leaves the cache as it was.
    const evictions = this.evictionsFor(tokens.length);
    const positions = this.spec.positions;
    const lastPosition = this.entries.length - evictions + tokens.length - 1;
    if (positions.kind === "learned" && lastPosition >= positions.max_positions) {
      throw new Error(`StreamingReference: position ${lastPosition} is past the learned position table (${positions.max_positions})`);
    }
    this.entries.splice(Math.min(this.policy.sink_size, this.entries.length), evictions);

    const { spec } = this;
    const start = this.entries.length;
    const fresh: CacheEntry[] = tokens.map((_, k) => ({ streamIndex: this.tokensFed + k, keys: [], values: [] }));
    let hidden = tokens.map((token, k) => this.embed(token, start + k));

    for (let layer = 0; layer < spec.num_layers; layer++) {
      const prefix = `model.layers.${layer}`;
      const normed = hidden.map((x) => this.norm(x, `${prefix}.input_layernorm`));
      const projection = (x: Float64Array, name: "q" | "k" | "v") =>
        this.linear(x, `${prefix}.self_attn.${name}_proj.weight`, spec.qkv_bias ? `${prefix}.self_attn.${name}_proj.bias` : undefined);
      for (let k = 0; k < tokens.length; k++) {
        fresh[k].keys.push(projection(normed[k], "k"));
        fresh[k].values.push(projection(normed[k], "v"));
      }
      // A sliding layer sees only the keys fewer than `size` cache indices behind the query.
      const windowSize = spec.sliding_window?.layers.includes(layer) ? spec.sliding_window.size : Infinity;
      const context = [...this.entries, ...fresh];
      // The point of the oracle: every key is rotated at its cache index as of this forward.
      const keys = context.map((entry, j) => this.rotateHeads(entry.keys[layer], j, spec.num_kv_heads));
      const values = context.map((entry) => entry.values[layer]);
      hidden = hidden.map((x, k) => {
        const position = start + k;
        const query = this.rotateHeads(projection(normed[k], "q"), position, spec.num_heads);
        // Causal: the cache plus the new tokens up to and including this one.
        const first = Math.max(0, position - windowSize + 1);
        const attended = this.attend(query, position, first, keys.slice(first, position + 1), values.slice(first, position + 1));
        const h = add(x, this.linear(attended, `${prefix}.self_attn.o_proj.weight`, spec.dense_bias ? `${prefix}.self_attn.o_proj.bias` : undefined));
        switch (spec.block ?? "sequential") {
          case "sequential":
            return add(h, this.mlp(this.norm(h, `${prefix}.post_attention_layernorm`), prefix));
          case "parallel":
            return add(h, this.mlp(this.norm(x, `${prefix}.post_attention_layernorm`), prefix));
          case "parallel_shared_norm":
            return add(h, this.mlp(normed[k], prefix));
        }
      });
    }

    this.entries.push(...fresh);
    this.tokensFed += tokens.length;
    const output = spec.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    return hidden.map((x) => Float32Array.from(this.linear(this.norm(x, "model.norm"), output)));
  }

  /**
   * How many of the oldest non-sink entries must go for `incoming` more tokens to fit; throws if they cannot
   * fit even then.
   */
  private evictionsFor(incoming: number): number {
    const { sink_size, window_size } = this.policy;
    if (window_size === null) return 0;
    const capacity = sink_size + window_size;
    // Entries are in stream order and sinks are never evicted, so the sinks are the leading entries.
    const sinks = Math.min(sink_size, this.entries.length);
    if (incoming > capacity - sinks) {
      throw new Error(
        `StreamingReference: cannot feed ${incoming} tokens in one forward; with ${sinks} sink tokens cached and ` +
          `capacity ${capacity} at most ${capacity - sinks} fit, feed the tokens in smaller chunks`,
      );
    }
    return Math.max(0, this.entries.length + incoming - capacity);
  }

  private embed(token: number, position: number): Float64Array {
    const multiplier = this.spec.embedding_multiplier ?? 1;
    const x = this.row("model.embed_tokens.weight", token).map((v) => v * multiplier);
    if (this.spec.positions.kind !== "learned") return x;
    return add(x, this.row("model.embed_positions.weight", position));
  }

  /**
   * Scaled dot-product attention of one token's query heads over the given (already rotated) keys, which
   * start at cache index `firstKey`.
   */
  private attend(query: Float64Array, queryPosition: number, firstKey: number, keys: Float64Array[], values: Float64Array[]): Float64Array {
    const { num_heads, num_kv_heads, head_dim } = this.spec;
    const headsPerKv = num_heads / num_kv_heads;
    const scale = 1 / Math.sqrt(head_dim);
    const output = new Float64Array(num_heads * head_dim);
    const scores = new Float64Array(keys.length);
    for (let head = 0; head < num_heads; head++) {
      const q = head * head_dim;
      const kv = Math.floor(head / headsPerKv) * head_dim;
      for (let j = 0; j < keys.length; j++) {
        let dot = 0;
        for (let d = 0; d < head_dim; d++) dot += query[q + d] * keys[j][kv + d];
        // ALiBi penalises distance in cache positions; the key at cache index j sits at position j.
        scores[j] = dot * scale - (this.slopes ? this.slopes[head] * (queryPosition - firstKey - j) : 0);
      }
      const weights = softmax(scores);
      for (let j = 0; j < keys.length; j++) {
        for (let d = 0; d < head_dim; d++) output[q + d] += weights[j] * values[j][kv + d];
      }
    }
    return output;
  }

  /** Rotates each of `heads` concatenated head vectors to `position` into a new array; without RoPE returns `vector`. */
  private rotateHeads(vector: Float64Array, position: number, heads: number): Float64Array {
    const positions = this.spec.positions;
    if (positions.kind !== "rope" || !this.inverseFrequencies) return vector;
    const { layout, rotary_dim } = positions.rope;
    const half = rotary_dim / 2;
    const rotated = Float64Array.from(vector);
    for (let i = 0; i < half; i++) {
      const angle = position * this.inverseFrequencies[i];
      const cos = Math.cos(angle) * this.ropeMagnitude;
      const sin = Math.sin(angle) * this.ropeMagnitude;
      // rotate_half pairs (i, i + rotary_dim / 2); interleaved pairs (2i, 2i + 1).
      const [a, b] = layout === "rotate_half" ? [i, i + half] : [2 * i, 2 * i + 1];
      for (let head = 0; head < heads; head++) {
        const offset = head * this.spec.head_dim;
        const x = vector[offset + a];
        const y = vector[offset + b];
        rotated[offset + a] = x * cos - y * sin;
        rotated[offset + b] = y * cos + x * sin;
      }
    }
    return rotated;
  }

  private mlp(x: Float64Array, prefix: string): Float64Array {
    const { mlp } = this.spec;
    const biased = mlpHasBias(this.spec);
    const project = (input: Float64Array, name: string) =>
      this.linear(input, `${prefix}.mlp.${name}.weight`, biased ? `${prefix}.mlp.${name}.bias` : undefined);
    if (mlp === "swiglu" || mlp === "geglu") {
      const gate = project(x, "gate_proj");
      const up = project(x, "up_proj");
      const activation = mlp === "swiglu" ? (g: number) => g / (1 + Math.exp(-g)) : geluTanh;
      return project(gate.map((g, i) => activation(g) * up[i]), "down_proj");
    }
    return project(project(x, "up_proj").map(mlp === "gelu_exact" ? geluErf : geluTanh), "down_proj");
  }

  private norm(x: Float64Array, prefix: string): Float64Array {
    const weight = this.tensor(`${prefix}.weight`).data;
    const n = x.length;
    const eps = this.spec.norm_eps;
    if (this.spec.norm === "rms") {
      const meanSquare = x.reduce((sum, v) => sum + v * v, 0) / n;
      const inverse = 1 / Math.sqrt(meanSquare + eps);
      return x.map((v, i) => v * inverse * weight[i]);
    }
    const bias = this.tensor(`${prefix}.bias`).data;
    const mean = x.reduce((sum, v) => sum + v, 0) / n;
    const variance = x.reduce((sum, v) => sum + (v - mean) * (v - mean), 0) / n;
    const inverse = 1 / Math.sqrt(variance + eps);
    return x.map((v, i) => (v - mean) * inverse * weight[i] + bias[i]);
  }

  /** y = x W^T (+ b), with W stored [out, in]. */
  private linear(x: Float64Array, weightName: string, biasName?: string): Float64Array {
    const { shape, data } = this.tensor(weightName);
    const [outFeatures, inFeatures] = shape;
    const bias = biasName === undefined ? null : this.tensor(biasName).data;
    const y = new Float64Array(outFeatures);
    for (let o = 0; o < outFeatures; o++) {
      let sum = bias ? bias[o] : 0;
      const rowStart = o * inFeatures;
      for (let i = 0; i < inFeatures; i++) sum += data[rowStart + i] * x[i];
      y[o] = sum;
    }
    return y;
  }

  private row(name: string, index: number): Float64Array {
    const { shape, data } = this.tensor(name);
    const width = shape[1];
    return Float64Array.from(data.subarray(index * width, (index + 1) * width));
  }

  private tensor(name: string): WeightTensor {
    const tensor = this.weights.get(name);
    if (!tensor) throw new Error(`StreamingReference: missing weight ${name}`);
    return tensor;
  }
}

/**
 * ALiBi slopes as Press et al. define them and Bloom's `build_alibi_tensor` computes them: a geometric
 * sequence for the largest power of two n <= heads, then, for the remaining heads, every other slope of the
 * sequence for 2n.
 */
export function referenceAlibiSlopes(heads: number): number[] {
  const powerOfTwo = 2 ** Math.floor(Math.log2(heads));
  // The sequence for n heads starts at 2^(-8/n) and has that same ratio.
  const sequence = (n: number, count: number, step: number) =>
    Array.from({ length: count }, (_, i) => 2 ** ((-8 / n) * (1 + i * step)));
  const slopes = sequence(powerOfTwo, powerOfTwo, 1);
  const remaining = Math.min(powerOfTwo, heads - powerOfTwo);
  return slopes.concat(sequence(2 * powerOfTwo, remaining, 2));
}

/** Negative log-likelihood (nats) of `target` under `logits`, via a numerically stable log-softmax. */
export function referenceNll(logits: Float32Array, target: number): number {
  if (!Number.isInteger(target) || target < 0 || target >= logits.length) {
    throw new Error(`referenceNll: target ${target} is outside [0, ${logits.length})`);
  }
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  return max + Math.log(sum) - logits[target];
}

function softmax(scores: Float64Array): Float64Array {
  let max = -Infinity;
  for (const s of scores) max = Math.max(max, s);
  const exps = scores.map((s) => Math.exp(s - max));
  const total = exps.reduce((sum, e) => sum + e, 0);
  return exps.map((e) => e / total);
}

function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
}

/** The exact GELU, 0.5 x (1 + erf(x / sqrt(2))). */
function geluErf(x: number): number {
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}

/**
 * erf by its Maclaurin series, summed in float64 until the terms vanish: within 1e-7 of erf for |z| < 5
 * (the cancellation grows with |z|); beyond, erf is +-1 to within erfc(5) = 1.5e-12.
 */
function erf(z: number): number {
  if (Math.abs(z) >= 5) return Math.sign(z);
  let term = z;
  let sum = z;
  for (let n = 1; Math.abs(term) > 1e-17 * Math.abs(sum) || n < 3; n++) {
    term *= (-z * z) / n;
    sum += term / (2 * n + 1);
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

function add(a: Float64Array, b: Float64Array): Float64Array {
  return a.map((v, i) => v + b[i]);
}

/**
 * A deliberately plain float64 forward of the decoder contract (loops over batch rows, tokens, heads and
 * slots), used to check exported ONNX graphs independently of how the graph computes things.
 *
 * A query with no visible slot (left padding) has no defined output: its hidden state becomes NaN, and so do
 * the cache entries later layers derive from it. Those slots are masked for every other query, and masked
 * slots are skipped (never multiplied by zero), so the NaN stays where the contract leaves values undefined.
 */
import type { DecoderSpec, DecoderWeights } from "../../src/architecture/decoder_spec.js";
import { referenceAlibiSlopes } from "./reference/streaming_reference.js";
// RoPE frequencies come from the formulas written out again in the test tree, not from src/positions/rope.ts.
import { formulaAttentionFactor, formulaInverseFrequenciesFloat32 } from "./reference/rope_formulas.js";

/** One layer's cache, [batch, num_kv_heads, length, head_dim] row-major. */
export interface NaiveLayerCache {
  key: Float64Array;
  value: Float64Array;
  length: number;
}

export interface NaiveInputs {
  /** [batch][sequence_length] */
  inputIds: readonly (readonly number[])[];
  /** [batch][past + sequence_length] */
  attentionMask: readonly (readonly number[])[];
  /** [batch][sequence_length]; required for RoPE and learned positions. */
  positionIds?: readonly (readonly number[])[];
  /** Per layer; omitted for an empty cache. */
  past?: readonly NaiveLayerCache[];
}

export interface NaiveOutputs {
  /** [batch, sequence_length, vocab_size] */
  logits: Float64Array;
  present: NaiveLayerCache[];
}

export function naiveForward(spec: DecoderSpec, weights: DecoderWeights, inputs: NaiveInputs): NaiveOutputs {
  const { hidden_size: hidden, num_heads: heads, num_kv_heads: kvHeads, head_dim: headDim, vocab_size: vocab } = spec;
  const batch = inputs.inputIds.length;
  const n = inputs.inputIds[0].length;
  const pastLength = inputs.past?.[0].length ?? 0;
  const total = pastLength + n;
  const w = (name: string) => {
    const tensor = weights.get(name);
    if (!tensor) throw new Error(`naive forward: missing ${name}`);
    return tensor.data;
  };
  const slopes = spec.positions.kind === "alibi" ? referenceAlibiSlopes(heads) : undefined;

  const logits = new Float64Array(batch * n * vocab);
  const present: NaiveLayerCache[] = [];
  for (let layer = 0; layer < spec.num_layers; layer++) {
    const size = batch * kvHeads * total * headDim;
    present.push({ key: new Float64Array(size), value: new Float64Array(size), length: total });
    const past = inputs.past?.[layer];
    if (past) {
      for (let b = 0; b < batch; b++) {
        for (let g = 0; g < kvHeads; g++) {
          for (let j = 0; j < pastLength; j++) {
            const from = ((b * kvHeads + g) * pastLength + j) * headDim;
            const to = ((b * kvHeads + g) * total + j) * headDim;
            present[layer].key.set(past.key.subarray(from, from + headDim), to);
            present[layer].value.set(past.value.subarray(from, from + headDim), to);
          }
        }
      }
    }
  }

  for (let b = 0; b < batch; b++) {
    const mask = inputs.attentionMask[b];
    if (mask.length !== total) throw new Error(`naive forward: mask length ${mask.length} != ${total}`);
    // Position of each slot for ALiBi.
    const slotPosition: number[] = [];
    let attendedSoFar = 0;
    for (let j = 0; j < total; j++) {
      attendedSoFar += mask[j];
      slotPosition.push(spec.positions.kind === "alibi" && spec.positions.positions === "mask_cumsum" ? attendedSoFar - 1 : j);
    }

    let x: number[][] = inputs.inputIds[b].map((id, k) => {
      const row = Array.from(w("model.embed_tokens.weight").subarray(id * hidden, (id + 1) * hidden));
      if (spec.positions.kind === "learned") {
        const position = inputs.positionIds![b][k];
        const table = w("model.embed_positions.weight");
        for (let d = 0; d < hidden; d++) row[d] += table[position * hidden + d];
      }
      return row;
    });

    for (let layer = 0; layer < spec.num_layers; layer++) {
      const prefix = `model.layers.${layer}`;
      const cache = present[layer];
      const normed = x.map((row) => norm(spec, weights, `${prefix}.input_layernorm`, row));
      const queries = normed.map((row, k) =>
        rope(spec, linear(w(`${prefix}.self_attn.q_proj.weight`), row), inputs.positionIds?.[b][k]),
      );
      for (let k = 0; k < n; k++) {
        const key = rope(spec, linear(w(`${prefix}.self_attn.k_proj.weight`), normed[k]), inputs.positionIds?.[b][k]);
        const value = linear(w(`${prefix}.self_attn.v_proj.weight`), normed[k]);
        for (let g = 0; g < kvHeads; g++) {
          const at = ((b * kvHeads + g) * total + pastLength + k) * headDim;
          cache.key.set(key.slice(g * headDim, (g + 1) * headDim), at);
          cache.value.set(value.slice(g * headDim, (g + 1) * headDim), at);
        }
      }

      x = x.map((row, k) => {
        const querySlot = pastLength + k;
        const context = new Array<number>(heads * headDim).fill(0);
        for (let h = 0; h < heads; h++) {
          const g = Math.floor(h / (heads / kvHeads));
          const visible: number[] = [];
          for (let j = 0; j <= querySlot; j++) if (mask[j] === 1) visible.push(j);
          if (visible.length === 0) {
            context.fill(NaN, h * headDim, (h + 1) * headDim);
            continue;
          }
          const scores = visible.map((j) => {
            const keyAt = ((b * kvHeads + g) * total + j) * headDim;
            let dot = 0;
            for (let d = 0; d < headDim; d++) dot += queries[k][h * headDim + d] * cache.key[keyAt + d];
            const bias = slopes ? -slopes[h] * (slotPosition[querySlot] - slotPosition[j]) : 0;
            return dot / Math.sqrt(headDim) + bias;
          });
          const top = Math.max(...scores);
          const exps = scores.map((s) => Math.exp(s - top));
          const sum = exps.reduce((a, e) => a + e, 0);
          visible.forEach((j, i) => {
            const valueAt = ((b * kvHeads + g) * total + j) * headDim;
            for (let d = 0; d < headDim; d++) context[h * headDim + d] += (exps[i] / sum) * cache.value[valueAt + d];
          });
        }
        const attended = linear(w(`${prefix}.self_attn.o_proj.weight`), context);
        const h = row.map((v, d) => v + attended[d]);
        const mlpOut = mlp(spec, weights, prefix, norm(spec, weights, `${prefix}.post_attention_layernorm`, h));
        return h.map((v, d) => v + mlpOut[d]);
      });
    }

    const head = w(spec.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
    x.forEach((row, k) => {
      const out = linear(head, norm(spec, weights, "model.norm", row));
      logits.set(out, (b * n + k) * vocab);
    });
  }
  return { logits, present };
}

/** y = W x for W [out, in]. */
function linear(weight: Float32Array, x: readonly number[], bias?: Float32Array): number[] {
  const inputs = x.length;
  const out = new Array<number>(weight.length / inputs);
  for (let o = 0; o < out.length; o++) {
    let sum = bias ? bias[o] : 0;
    for (let i = 0; i < inputs; i++) sum += weight[o * inputs + i] * x[i];
    out[o] = sum;
  }
  return out;
}

function norm(spec: DecoderSpec, weights: DecoderWeights, prefix: string, x: readonly number[]): number[] {
  const weight = weights.get(`${prefix}.weight`)!.data;
  if (spec.norm === "rms") {
    const meanSquare = x.reduce((a, v) => a + v * v, 0) / x.length;
    return x.map((v, d) => (v / Math.sqrt(meanSquare + spec.norm_eps)) * weight[d]);
  }
  const mean = x.reduce((a, v) => a + v, 0) / x.length;
  const bias = weights.get(`${prefix}.bias`)!.data;
  const variance = x.reduce((a, v) => a + (v - mean) ** 2, 0) / x.length;
  return x.map((v, d) => ((v - mean) / Math.sqrt(variance + spec.norm_eps)) * weight[d] + bias[d]);
}

function mlp(spec: DecoderSpec, weights: DecoderWeights, layerPrefix: string, x: readonly number[]): number[] {
  const w = (name: string) => weights.get(`${layerPrefix}.mlp.${name}`)!.data;
  if (spec.mlp === "swiglu") {
    const gate = linear(w("gate_proj.weight"), x);
    const up = linear(w("up_proj.weight"), x);
    return linear(w("down_proj.weight"), gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]));
  }
  const up = linear(w("up_proj.weight"), x, w("up_proj.bias"));
  const gelu = up.map((v) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3))));
  return linear(w("down_proj.weight"), gelu, w("down_proj.bias"));
}

/** Rotates every head of a projected query/key row. */
function rope(spec: DecoderSpec, projected: number[], position: number | undefined): number[] {
  if (spec.positions.kind !== "rope") return projected;
  const ropeSpec = spec.positions.rope;
  const frequencies = formulaInverseFrequenciesFloat32(ropeSpec);
  const factor = formulaAttentionFactor(ropeSpec);
  const half = ropeSpec.rotary_dim / 2;
  const out = projected.slice();
  for (let head = 0; head * spec.head_dim < projected.length; head++) {
    const base = head * spec.head_dim;
    for (let i = 0; i < half; i++) {
      // The contract computes angles in float32 (float32 frequencies times the position, as transformers
      // does); rounding the product the same way keeps large positions comparable at 1e-4.
      const angle = Math.fround(position! * frequencies[i]);
      const [a, c] = ropeSpec.layout === "rotate_half" ? [base + i, base + i + half] : [base + 2 * i, base + 2 * i + 1];
      const cos = Math.cos(angle) * factor;
      const sin = Math.sin(angle) * factor;
      out[a] = projected[a] * cos - projected[c] * sin;
      out[c] = projected[c] * cos + projected[a] * sin;
    }
  }
  return out;
}

/**
 * The weights a quantized export computes with, restated for the oracle: each linear layer's weight rounded
 * as the quantized file stores it and scaled back. q8 rounds per tensor to 127 steps each side of zero; q4
 * rounds each run of 32 inputs of an output row to 7 steps each side (q4f16 then scales by the float16 nearest
 * to the scale). Activations the graph quantizes on the fly (q8) are not modelled: that error stays.
 */
import type { DecoderWeights, WeightTensor } from "../../../src/architecture/decoder_spec.js";
import { float16ToFloat32Table, float32ToFloat16Bits } from "../../../src/onnx/float16.js";

export type QuantizedDtype = "q8" | "q4" | "q4f16";

const HALF = float16ToFloat32Table();
const EMBEDDINGS = new Set(["model.embed_tokens.weight", "model.embed_positions.weight"]);

function largest(values: Float32Array, from: number, to: number): number {
  let max = 0;
  for (let i = from; i < to; i++) max = Math.max(max, Math.abs(values[i]));
  return max;
}

function dequantize(tensor: WeightTensor, dtype: QuantizedDtype): WeightTensor {
  const data = tensor.data;
  const out = new Float32Array(data.length);
  if (dtype === "q8") {
    const scale = Math.fround(largest(data, 0, data.length) / 127) || 1;
    for (let i = 0; i < data.length; i++) out[i] = Math.round(data[i] / scale) * scale;
    return { shape: tensor.shape, data: out };
  }
  const [rows, columns] = tensor.shape;
  for (let r = 0; r < rows; r++) {
    for (let start = 0; start < columns; start += 32) {
      const [from, to] = [r * columns + start, r * columns + Math.min(columns, start + 32)];
      const scale = Math.fround(largest(data, from, to) / 7) || 1;
      const applied = dtype === "q4f16" ? HALF[float32ToFloat16Bits(scale)] : scale;
      for (let i = from; i < to; i++) out[i] = Math.round(data[i] / scale) * applied;
    }
  }
  return { shape: tensor.shape, data: out };
}

/** `weights` with every linear layer's weight as the quantized export stores it. */
export function quantizedWeights(weights: DecoderWeights, dtype: QuantizedDtype): Map<string, WeightTensor> {
  const out = new Map<string, WeightTensor>();
  for (const [name, tensor] of weights) {
    out.set(name, tensor.shape.length === 2 && !EMBEDDINGS.has(name) ? dequantize(tensor, dtype) : tensor);
  }
  return out;
}

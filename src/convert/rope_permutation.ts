/**
 * Meta-layout (llama2.c, original pth, GGUF "llama") checkpoints rotate RoPE pairs (2i, 2i + 1) of each
 * head; Hugging Face Llama rotates pairs (i, i + head_dim / 2). Reordering the rows of the query and key
 * projections within each head turns one into the other exactly: the attention scores q·k are unchanged,
 * because queries and keys are permuted alike, and the values never rotate. The converted model is then a
 * standard "llama" model, whose cached keys every consumer reads in the rotate_half layout.
 */
import type { DecoderSpec, WeightTensor } from "../architecture/decoder_spec.js";
import type { TensorEntry } from "./checkpoint.js";

const QUERY_OR_KEY = /\.self_attn\.[qk]_proj\.weight$/;

/** Meta-layout weights, with every query and key projection loading in the rotate_half layout instead. */
export function withRotateHalfQueryKey(spec: DecoderSpec, tensors: ReadonlyMap<string, TensorEntry>): Map<string, TensorEntry> {
  return new Map(
    [...tensors].map(([name, entry]) => [
      name,
      QUERY_OR_KEY.test(name) ? { ...entry, load: () => interleavedToRotateHalf(entry.load(), spec.head_dim) } : entry,
    ]),
  );
}

/**
 * Reorders the rows of a `[heads * headDim, in]` projection from interleaved pairs to rotate_half, in place:
 * row `c * headDim / 2 + i` of each head takes row `2 * i + c`.
 */
export function interleavedToRotateHalf(tensor: WeightTensor, headDim: number): WeightTensor {
  const [rows, columns] = tensor.shape;
  const half = headDim / 2;
  const { data } = tensor;
  // One head at a time through a small copy, so no second full-size tensor is allocated.
  const head = new Float32Array(headDim * columns);
  for (let base = 0; base < rows * columns; base += head.length) {
    head.set(data.subarray(base, base + head.length));
    for (let i = 0; i < half; i++) {
      for (let c = 0; c < 2; c++) {
        const from = (2 * i + c) * columns;
        data.set(head.subarray(from, from + columns), base + (c * half + i) * columns);
      }
    }
  }
  return tensor;
}

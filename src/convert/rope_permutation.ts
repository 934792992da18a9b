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
  return withQueryKeyRows(tensors, (tensor) => interleavedToRotateHalf(tensor, spec.head_dim));
}

/** rotate_half weights, with every query and key projection loading in the interleaved (Meta) layout instead. */
export function withInterleavedQueryKey(spec: DecoderSpec, tensors: ReadonlyMap<string, TensorEntry>): Map<string, TensorEntry> {
  return withQueryKeyRows(tensors, (tensor) => rotateHalfToInterleaved(tensor, spec.head_dim));
}

function withQueryKeyRows(tensors: ReadonlyMap<string, TensorEntry>, permute: (tensor: WeightTensor) => WeightTensor): Map<string, TensorEntry> {
  return new Map([...tensors].map(([name, entry]) => [name, QUERY_OR_KEY.test(name) ? { ...entry, load: () => permute(entry.load()) } : entry]));
}

/**
 * Reorders the rows of a `[heads * headDim, in]` projection from interleaved pairs to rotate_half, in place:
 * row `c * headDim / 2 + i` of each head takes row `2 * i + c`.
 */
export function interleavedToRotateHalf(tensor: WeightTensor, headDim: number): WeightTensor {
  return permuteHeadRows(tensor, headDim, (i, c) => 2 * i + c, (i, c) => c * (headDim / 2) + i);
}

/** The inverse of {@link interleavedToRotateHalf}: row `2 * i + c` of each head takes row `c * headDim / 2 + i`. */
export function rotateHalfToInterleaved(tensor: WeightTensor, headDim: number): WeightTensor {
  return permuteHeadRows(tensor, headDim, (i, c) => c * (headDim / 2) + i, (i, c) => 2 * i + c);
}

/** Moves, within each head, row `from(i, c)` to row `to(i, c)` for every pair `i` and member `c`. */
function permuteHeadRows(tensor: WeightTensor, headDim: number, from: (i: number, c: number) => number, to: (i: number, c: number) => number): WeightTensor {
  const [rows, columns] = tensor.shape;
  const half = headDim / 2;
  const { data } = tensor;
  // One head at a time through a small copy, so no second full-size tensor is allocated.
  const head = new Float32Array(headDim * columns);
  for (let base = 0; base < rows * columns; base += head.length) {
    head.set(data.subarray(base, base + head.length));
    for (let i = 0; i < half; i++) {
      for (let c = 0; c < 2; c++) {
        const source = from(i, c) * columns;
        data.set(head.subarray(source, source + columns), base + to(i, c) * columns);
      }
    }
  }
  return tensor;
}

/**
 * How checkpoint weights are stored as ONNX initializers: linear weights transposed to `[in, out]` so MatMul
 * reads them directly, optionally converted to float16, or quantized as transformers.js's quantized files
 * hold them:
 * - q8 (`model_quantized.onnx`, dynamic int8 as onnxruntime's quantizer writes it for MatMulInteger): int8
 *   values `[in, out]`, symmetric, with one float32 scale per tensor.
 * - q4 and q4f16 (`model_q4.onnx`, `model_q4f16.onnx`, for com.microsoft MatMulNBits): per output row, blocks
 *   of Q4_BLOCK_SIZE inputs as 4-bit codes packed two a byte (low nibble first) around the default zero point
 *   8, with one scale per block (float32, or float16 for q4f16).
 */
import type { WeightTensor } from "../architecture/decoder_spec.js";
import { float32BitsToFloat16Bits, float32ToFloat16Bits } from "./float16.js";

/** How the graph stores its weights: float ones, and quantized linear layers. */
export type WeightDtype = "fp32" | "fp16" | "q8" | "q4" | "q4f16";

/** The encoding of one initializer. */
export type WeightEncoding = "fp32" | "fp16" | "int8" | "int8_scale" | "q4_blocks" | "q4_scales" | "q4_scales_fp16";

/** One checkpoint weight (or one part of a quantized one) as the graph stores it. */
export interface StoredWeight {
  /** The checkpoint name (see `weightShapes`). */
  name: string;
  /** The checkpoint shape. */
  shape: readonly number[];
  /** Stored as `[shape[1], shape[0]]` (float and int8 encodings). */
  transposed: boolean;
  encoding: WeightEncoding;
}

/** Inputs per MatMulNBits block (a power of two, at least 16, as the op requires). */
export const Q4_BLOCK_SIZE = 32;
/** The 4-bit code of zero: MatMulNBits's default zero point. */
const Q4_ZERO_POINT = 8;
/** The largest int8 magnitude used: symmetric quantization leaves -128 out. */
const INT8_MAX = 127;

const isLittleEndianHost = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The float type of a dtype's unquantized weights (norms, embeddings). */
export function floatDtype(dtype: WeightDtype): "fp32" | "fp16" {
  return dtype === "fp16" || dtype === "q4f16" ? "fp16" : "fp32";
}

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((count, dim) => count * dim, 1);
}

/** [out, in] as MatMulNBits counts it: rows, blocks per row. */
function q4Blocks(weight: StoredWeight): [number, number] {
  return [weight.shape[0], Math.ceil(weight.shape[1] / Q4_BLOCK_SIZE)];
}

export function storedDims(weight: StoredWeight): number[] {
  switch (weight.encoding) {
    case "int8_scale":
      return [];
    case "q4_blocks":
      return [...q4Blocks(weight), Q4_BLOCK_SIZE / 2];
    case "q4_scales":
    case "q4_scales_fp16":
      return [elementCount(q4Blocks(weight))];
    default:
      return weight.transposed ? [weight.shape[1], weight.shape[0]] : [...weight.shape];
  }
}

const BYTES_PER_ELEMENT: Record<WeightEncoding, number> = {
  fp32: 4, fp16: 2, int8: 1, int8_scale: 4, q4_blocks: 1, q4_scales: 4, q4_scales_fp16: 2,
};

export function storedByteLength(weight: StoredWeight): number {
  return elementCount(storedDims(weight)) * BYTES_PER_ELEMENT[weight.encoding];
}

/** Throws unless `tensor` is a float32 tensor of exactly the expected shape. */
export function checkWeightShape(name: string, expected: readonly number[], tensor: WeightTensor | undefined): void {
  if (!tensor) throw new Error(`weight ${name}: missing (expected shape [${expected.join(", ")}])`);
  const shape = tensor.shape;
  if (shape.length !== expected.length || shape.some((dim, i) => dim !== expected[i])) {
    throw new Error(`weight ${name}: shape [${shape.join(", ")}] does not match the expected [${expected.join(", ")}]`);
  }
  if (!(tensor.data instanceof Float32Array) || tensor.data.length !== elementCount(expected)) {
    throw new Error(
      `weight ${name}: expected ${elementCount(expected)} float32 values for shape [${expected.join(", ")}], ` +
        `got ${tensor.data?.length ?? "no data"}`,
    );
  }
}

/** Square tiles for transposing: both the rows read and the rows written stay in cache. */
const TRANSPOSE_TILE = 64;

/** The little-endian bytes of a weight as stored (the tensor must have passed `checkWeightShape`). */
export function encodeStoredWeight(weight: StoredWeight, tensor: WeightTensor): Uint8Array {
  // Typed arrays use the host byte order; ONNX raw data is little-endian, as every Node.js platform is.
  if (!isLittleEndianHost) throw new Error("ONNX export requires a little-endian host");
  const source = tensor.data;
  switch (weight.encoding) {
    case "int8":
    case "int8_scale":
      return encodeInt8(weight, source);
    case "q4_blocks":
    case "q4_scales":
    case "q4_scales_fp16":
      return encodeQ4(weight, source);
  }
  if (weight.encoding === "fp32" && !weight.transposed) {
    return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  }
  // fp32 copies bit patterns unchanged; fp16 converts them.
  const sourceBits = new Uint32Array(source.buffer, source.byteOffset, source.length);
  const stored = weight.encoding === "fp16" ? new Uint16Array(source.length) : new Uint32Array(source.length);
  const convert = weight.encoding === "fp16" ? float32BitsToFloat16Bits : (bits: number) => bits;
  if (weight.transposed) {
    const [rows, columns] = weight.shape;
    for (let rowStart = 0; rowStart < rows; rowStart += TRANSPOSE_TILE) {
      const rowEnd = Math.min(rows, rowStart + TRANSPOSE_TILE);
      for (let columnStart = 0; columnStart < columns; columnStart += TRANSPOSE_TILE) {
        const columnEnd = Math.min(columns, columnStart + TRANSPOSE_TILE);
        for (let c = columnStart; c < columnEnd; c++) {
          for (let r = rowStart; r < rowEnd; r++) stored[c * rows + r] = convert(sourceBits[r * columns + c]);
        }
      }
    }
  } else {
    for (let i = 0; i < source.length; i++) stored[i] = convert(sourceBits[i]);
  }
  return new Uint8Array(stored.buffer);
}

function largestMagnitude(values: Float32Array, from = 0, to = values.length): number {
  let largest = 0;
  for (let i = from; i < to; i++) largest = Math.max(largest, Math.abs(values[i]));
  return largest;
}

/** Symmetric per-tensor int8: the codes of the [out, in] weight stored [in, out], or the scale. */
function encodeInt8(weight: StoredWeight, source: Float32Array): Uint8Array {
  const scale = largestMagnitude(source) / INT8_MAX || 1;
  if (weight.encoding === "int8_scale") return new Uint8Array(Float32Array.of(scale).buffer);
  const [rows, columns] = weight.shape;
  const codes = new Int8Array(source.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < columns; c++) codes[c * rows + r] = Math.round(source[r * columns + c] / scale);
  }
  return new Uint8Array(codes.buffer);
}

/** 4-bit blocks along each row of the [out, in] weight, or their scales; a short last block pads with zeros. */
function encodeQ4(weight: StoredWeight, source: Float32Array): Uint8Array {
  const [rows, blocks] = q4Blocks(weight);
  const columns = weight.shape[1];
  const scales = new Float32Array(rows * blocks);
  const packed = weight.encoding === "q4_blocks" ? new Uint8Array(rows * blocks * (Q4_BLOCK_SIZE / 2)) : null;
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < blocks; b++) {
      const start = r * columns + b * Q4_BLOCK_SIZE;
      const end = r * columns + Math.min(columns, (b + 1) * Q4_BLOCK_SIZE);
      const scale = largestMagnitude(source, start, end) / (Q4_ZERO_POINT - 1) || 1;
      scales[r * blocks + b] = scale;
      if (!packed) continue;
      for (let k = 0; k < Q4_BLOCK_SIZE; k++) {
        const code = start + k < end ? Math.round(source[start + k] / scale) + Q4_ZERO_POINT : Q4_ZERO_POINT;
        packed[(r * blocks + b) * (Q4_BLOCK_SIZE / 2) + (k >> 1)] |= code << (4 * (k & 1));
      }
    }
  }
  if (packed) return packed;
  if (weight.encoding === "q4_scales") return new Uint8Array(scales.buffer);
  return new Uint8Array(Uint16Array.from(scales, (scale) => float32ToFloat16Bits(scale)).buffer);
}

/**
 * How checkpoint weights are stored as ONNX initializers: linear weights transposed to `[in, out]` so MatMul
 * reads them directly, optionally converted to float16.
 */
import type { WeightTensor } from "../architecture/decoder_spec.js";
import { float32BitsToFloat16Bits } from "./float16.js";

export type WeightDtype = "fp32" | "fp16";

/** One checkpoint weight as the graph stores it. */
export interface StoredWeight {
  /** The checkpoint name (see `weightShapes`). */
  name: string;
  /** The checkpoint shape. */
  shape: readonly number[];
  /** Stored as `[shape[1], shape[0]]`. */
  transposed: boolean;
  dtype: WeightDtype;
}

const isLittleEndianHost = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function bytesPerElement(dtype: WeightDtype): number {
  return dtype === "fp16" ? 2 : 4;
}

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((count, dim) => count * dim, 1);
}

export function storedDims(weight: StoredWeight): number[] {
  return weight.transposed ? [weight.shape[1], weight.shape[0]] : [...weight.shape];
}

export function storedByteLength(weight: StoredWeight): number {
  return elementCount(weight.shape) * bytesPerElement(weight.dtype);
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
  if (weight.dtype === "fp32" && !weight.transposed) {
    return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  }
  // fp32 copies bit patterns unchanged; fp16 converts them.
  const sourceBits = new Uint32Array(source.buffer, source.byteOffset, source.length);
  const stored = weight.dtype === "fp16" ? new Uint16Array(source.length) : new Uint32Array(source.length);
  const convert = weight.dtype === "fp16" ? float32BitsToFloat16Bits : (bits: number) => bits;
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

/**
 * Reading float tensors stored as f32, f16 or bf16 and widening them to float32 (what the ONNX writer takes).
 */
import { float16ToFloat32Table } from "../onnx/float16.js";
import type { BoundedReader } from "./bounded_reader.js";

export type FloatEncoding = "f32" | "f16" | "bf16";

const BYTES_PER_ELEMENT: Readonly<Record<FloatEncoding, number>> = { f32: 4, f16: 2, bf16: 2 };

/** The float32 value of one f16 bit pattern. */
export function halfToFloat(bits: number): number {
  return float16ToFloat32Table()[bits];
}

/** Reads `count` values stored as `encoding` at `offset`, as float32. */
export function readFloats(
  reader: BoundedReader,
  offset: number,
  count: number,
  encoding: FloatEncoding,
  what: string,
): Float32Array {
  const bytes = reader.alignedBytes(offset, count * BYTES_PER_ELEMENT[encoding], what);
  if (encoding === "f32") return new Float32Array(bytes, 0, count);
  const source = new Uint16Array(bytes, 0, count);
  const out = new Float32Array(count);
  if (encoding === "f16") {
    const table = float16ToFloat32Table();
    for (let i = 0; i < count; i++) out[i] = table[source[i]];
  } else {
    // bf16 is the top half of a float32.
    const outBits = new Uint32Array(out.buffer);
    for (let i = 0; i < count; i++) outBits[i] = source[i] << 16;
  }
  return out;
}

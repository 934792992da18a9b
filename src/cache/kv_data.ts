/**
 * Key/value buffers as onnxruntime hands them over: float32, or float16 as raw bits (Uint16Array). Moving a
 * key is done in float32 and rounded once when the cache holds float16.
 */
import { float16ToFloat32Table, float32ToFloat16Bits } from "../onnx/float16.js";
import type { KeyRotation } from "../positions/rope.js";

export type KvType = "float32" | "float16";
export type KvArray = Float32Array | Uint16Array;

export function allocateKv(type: KvType, length: number): KvArray {
  return type === "float32" ? new Float32Array(length) : new Uint16Array(length);
}

/** Copies `length` values between buffers of the same type. */
export function copyKv(source: KvArray, from: number, length: number, target: KvArray, to: number): void {
  if (target instanceof Float32Array) target.set((source as Float32Array).subarray(from, from + length), to);
  else target.set((source as Uint16Array).subarray(from, from + length), to);
}

/** Copies `length` values into a float32 array, widening float16. */
export function readAsFloat32(source: KvArray, from: number, length: number, target: Float32Array, to: number): void {
  if (source instanceof Float32Array) {
    target.set(source.subarray(from, from + length), to);
    return;
  }
  const table = float16ToFloat32Table();
  for (let i = 0; i < length; i++) target[to + i] = table[source[from + i]];
}

/** Stores `length` float32 values, rounding them to float16 when the target holds float16. */
export function writeFromFloat32(source: Float32Array, from: number, length: number, target: KvArray, to: number): void {
  if (target instanceof Float32Array) {
    target.set(source.subarray(from, from + length), to);
    return;
  }
  for (let i = 0; i < length; i++) target[to + i] = float32ToFloat16Bits(source[from + i]);
}

/**
 * Writes `rows` head vectors of `source` into `target`, rotated. Float32 buffers rotate directly; float16
 * ones go through `scratch` (at least rows * head_dim long).
 */
export function rotateRows(
  rotation: KeyRotation,
  source: KvArray,
  from: number,
  target: KvArray,
  to: number,
  rows: number,
  scratch: Float32Array,
): void {
  if (source instanceof Float32Array && target instanceof Float32Array) {
    rotation.apply(source, from, target, to, rows);
    return;
  }
  const length = rows * rotation.rope.head_dim;
  readAsFloat32(source, from, length, scratch, 0);
  rotation.apply(scratch, 0, scratch, 0, rows);
  writeFromFloat32(scratch, 0, length, target, to);
}

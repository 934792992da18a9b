/** IEEE 754 binary16 conversion, both ways: fp16 weights and caches are held as their raw bits (Uint16Array). */

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

/** The float16 bit pattern nearest to a float32 value (round to nearest, ties to even). */
export function float32ToFloat16Bits(value: number): number {
  scratch[0] = value;
  return float32BitsToFloat16Bits(scratchBits[0]);
}

/** As `float32ToFloat16Bits`, from the float32 bit pattern (lets bulk conversion skip a float round trip). */
export function float32BitsToFloat16Bits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;

  if (exponent === 0xff) return sign | 0x7c00 | (mantissa !== 0 ? 0x200 : 0); // infinity or NaN
  const halfExponent = exponent - 127 + 15;
  if (halfExponent >= 0x1f) return sign | 0x7c00; // too large: infinity

  if (halfExponent <= 0) {
    // Subnormal result: the value in units of 2^-24, with the float32 implicit leading bit made explicit.
    if (halfExponent < -10) return sign; // below half the smallest subnormal: zero
    const significand = mantissa | 0x800000;
    const shift = 14 - halfExponent;
    return sign | roundShift(significand, shift);
  }
  // A carry out of the mantissa correctly bumps the exponent (and reaches infinity at the top).
  return sign | ((halfExponent << 10) + roundShift(mantissa, 13));
}

/** value >> shift, rounded to nearest with ties to even. */
function roundShift(value: number, shift: number): number {
  const truncated = value >>> shift;
  const remainder = value & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return remainder > half || (remainder === half && (truncated & 1) === 1) ? truncated + 1 : truncated;
}

let halfTable: Float32Array | undefined;

/** Every float16 bit pattern as float32, built on first use (256 KiB) so widening is one lookup per value. */
export function float16ToFloat32Table(): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let bits = 0; bits < 65536; bits++) {
      const sign = bits & 0x8000 ? -1 : 1;
      const exponent = (bits >> 10) & 0x1f;
      const fraction = bits & 0x3ff;
      if (exponent === 0) halfTable[bits] = sign * fraction * 2 ** -24;
      else if (exponent === 31) halfTable[bits] = fraction ? NaN : sign * Infinity;
      else halfTable[bits] = sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
    }
  }
  return halfTable;
}

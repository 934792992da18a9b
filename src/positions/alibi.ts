/**
 * ALiBi head slopes (Press et al., "Train Short, Test Long"), as Bloom and Falcon compute them.
 *
 * For a power of two n the slopes are the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8). Otherwise the
 * n' = largest power of two below n heads take that sequence for n', and the remaining heads take every
 * other slope (the odd powers) of the sequence for 2n'. MPT orders the non-power-of-two case differently;
 * the two agree whenever n is a power of two.
 */
export function alibiSlopes(numHeads: number): Float32Array {
  if (!Number.isInteger(numHeads) || numHeads < 1) throw new Error(`alibiSlopes: invalid head count ${numHeads}`);
  const closestPowerOfTwo = 2 ** Math.floor(Math.log2(numHeads));
  const slopes = new Float32Array(numHeads);
  const base = 2 ** -(8 / closestPowerOfTwo);
  for (let h = 0; h < closestPowerOfTwo; h++) slopes[h] = base ** (h + 1);
  const extraBase = 2 ** -(8 / (2 * closestPowerOfTwo));
  for (let h = closestPowerOfTwo; h < numHeads; h++) {
    slopes[h] = extraBase ** (2 * (h - closestPowerOfTwo) + 1);
  }
  return slopes;
}

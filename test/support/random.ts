/** Seeded random numbers for tests and benchmarks. */

/** mulberry32: a tiny deterministic generator, uniform in [0, 1). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A standard normal draw (Box-Muller). */
export function gaussian(next: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
}

/** Logits as a language model's look: normal with a std of 3 to 5, plus 1 to 4 far more likely tokens. */
export function peakedLogits(next: () => number, vocab: number): Float32Array {
  const sigma = 3 + 2 * next();
  const row = Float32Array.from({ length: vocab }, () => sigma * gaussian(next));
  const few = 1 + Math.floor(next() * 4);
  for (let j = 0; j < few; j++) row[Math.floor(next() * vocab)] = 4 * sigma + 10 * next();
  return row;
}

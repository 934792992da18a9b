/**
 * TopKTopPFilter selects without sorting the vocabulary; these tests hold every row it filters to the
 * definition: the kept tokens are the most likely ones, at most top_k of them, the fewest whose
 * probabilities (renormalised over the top-k candidates) sum to at least top_p, and their logits unchanged.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Tensor } from "@huggingface/transformers";
import { TopKTopPFilter } from "../src/generation/logits_processors.js";
import { gaussian, peakedLogits, seededRandom } from "./support/random.js";

type Kind = (next: () => number, vocab: number) => Float32Array;

/** Row generators: realistic peaked logits, flat rows, exact ties, masked rows, wide and one-hot ones. */
const kinds: Record<string, Kind> = {
  peaked: peakedLogits,
  flat(next, vocab) {
    return new Float32Array(vocab).fill(Math.round(next() * 20 - 10));
  },
  nearlyFlat(next, vocab) {
    return Float32Array.from({ length: vocab }, () => 1e-3 * next());
  },
  ties(next, vocab) {
    return Float32Array.from({ length: vocab }, () => Math.round(4 * gaussian(next)) / 2);
  },
  masked(next, vocab) {
    const row = Float32Array.from({ length: vocab }, () => 3 * gaussian(next));
    for (let i = 0; i < vocab; i++) {
      const r = next();
      if (r < 0.4) row[i] = -Infinity;
      else if (r < 0.42) row[i] = r < 0.41 ? -0 : 0;
    }
    return row;
  },
  wide(next, vocab) {
    return Float32Array.from({ length: vocab }, () => 20 * gaussian(next));
  },
  oneHot(next, vocab) {
    const row = Float32Array.from({ length: vocab }, () => gaussian(next));
    row[Math.floor(next() * vocab)] = 40;
    return row;
  },
};

const TOP_P = [1e-9, 0.3, 0.9, 0.999, 1];
const topKs = (vocab: number) => [0, 1, 5, 50, vocab, vocab + 10];
/** Sums taken in another order differ by rounding only. */
const RELATIVE = 1e-9;

/** Asserts that `out` is `row` filtered as the definition says. */
function assertFiltered(row: Float32Array, out: Float32Array, top_k: number, top_p: number, label: string): void {
  const finite: number[] = [];
  const kept: number[] = [];
  for (let i = 0; i < row.length; i++) {
    if (row[i] > -Infinity) finite.push(i);
    if (out[i] > -Infinity) {
      kept.push(i);
      if (!Object.is(out[i], row[i])) assert.fail(`${label}: token ${i} kept as ${out[i]}, its logit is ${row[i]}`);
    }
  }
  if (finite.length === 0) return assert.equal(kept.length, 0, label);
  assert.ok(kept.length >= 1, `${label}: nothing kept`);
  if (top_k > 0) assert.ok(kept.length <= top_k, `${label}: ${kept.length} kept, top_k ${top_k}`);
  const keptSet = new Set(kept);
  let lowestKept = Infinity;
  for (const i of kept) lowestKept = Math.min(lowestKept, row[i]);
  let highestMasked = -Infinity;
  for (const i of finite) if (!keptSet.has(i)) highestMasked = Math.max(highestMasked, row[i]);
  assert.ok(lowestKept >= highestMasked, `${label}: kept ${lowestKept} below masked ${highestMasked}`);
  const ranked = finite.map((i) => row[i]).sort((a, b) => b - a);
  const max = ranked[0];
  const candidates = top_k > 0 ? ranked.slice(0, top_k) : ranked;
  const total = candidates.reduce((sum, x) => sum + Math.exp(x - max), 0);
  const mass = kept.reduce((sum, i) => sum + Math.exp(row[i] - max), 0);
  if (top_p === 1) {
    // Every candidate that can be drawn stays.
    assert.ok(kept.length >= candidates.filter((x) => Math.exp(x - max) > 0).length, `${label}: top_p 1 masked a candidate`);
    return;
  }
  assert.ok(mass >= top_p * total * (1 - RELATIVE), `${label}: kept mass ${mass / total} < top_p ${top_p}`);
  if (kept.length > 1) {
    const withoutLowest = mass - Math.exp(lowestKept - max);
    assert.ok(withoutLowest < top_p * total * (1 + RELATIVE), `${label}: ${kept.length} kept where fewer reach top_p ${top_p}`);
  }
}

/** Filters `rows` as one batch and checks each; returns how many rows were checked. */
function check(filter: TopKTopPFilter, rows: Float32Array[], label: string): number {
  const vocab = rows[0].length;
  const batch = new Float32Array(vocab * rows.length);
  rows.forEach((row, r) => batch.set(row, r * vocab));
  const out = filter([], new Tensor("float32", batch, [rows.length, vocab])).data as Float32Array;
  rows.forEach((row, r) => assertFiltered(row, out.subarray(r * vocab, (r + 1) * vocab), filter.top_k, filter.top_p, `${label}, row ${r}`));
  return rows.length;
}

describe("TopKTopPFilter without a full sort", () => {
  it("filters seeded random rows of every kind as the definition says", () => {
    const next = seededRandom(1234);
    let checked = 0;
    // Filters are reused across vocabularies (small, large, small again) to exercise their scratch buffers.
    const filters = new Map<string, TopKTopPFilter>();
    const vocabs = [1, 2, 5, 1000, 32000, 5, 1000];
    for (const vocab of vocabs) {
      for (const [name, kind] of Object.entries(kinds)) {
        for (const batch of [1, 3]) {
          const rows = Array.from({ length: batch }, () => kind(next, vocab));
          for (const top_k of topKs(vocab)) {
            for (const top_p of TOP_P) {
              const key = `${top_k}/${top_p}`;
              if (!filters.has(key)) filters.set(key, new TopKTopPFilter(top_k, top_p));
              checked += check(filters.get(key)!, rows, `${name} vocab ${vocab} batch ${batch} top_k ${top_k} top_p ${top_p}`);
            }
          }
        }
      }
    }
    assert.equal(checked, vocabs.length * Object.keys(kinds).length * 4 * 6 * TOP_P.length);
  });

  it("keeps exactly the top_k best, ties going to the lower id, and the old answers on small rows", () => {
    const row = Float32Array.from([1, 3, 3, 2, 3, 0]);
    const kept = (filter: TopKTopPFilter) => [...(filter([[0n]], new Tensor("float32", row.slice(), [1, 6])).data as Float32Array)].flatMap((v, i) => (v > -Infinity ? [i] : []));
    assert.deepEqual(kept(new TopKTopPFilter(2, 1)), [1, 2]);
    assert.deepEqual(kept(new TopKTopPFilter(4, 1)), [1, 2, 3, 4]);
    assert.deepEqual(kept(new TopKTopPFilter(0, 1e-9)), [1]);
    assert.deepEqual(kept(new TopKTopPFilter(1, 1)), [1]);
  });

  it("thresholds that fall on running sums, -0 and +0, and rows with masked or no finite logits", () => {
    const next = seededRandom(7);
    let checked = 0;
    for (const vocab of [10, 1000, 32000]) {
      for (const top_p of [0.1, 0.25, 0.5, 0.75, 0.9]) {
        checked += check(new TopKTopPFilter(0, top_p), [new Float32Array(vocab).fill(2.5), new Float32Array(vocab)], `flat ${vocab} top_p ${top_p}`);
      }
    }
    const zeros = Float32Array.from({ length: 5000 }, (_, i) => (i % 3 === 2 ? -5 - next() : next() < 0.5 ? -0 : 0));
    const oneFinite = new Float32Array(3000).fill(-Infinity);
    oneFinite[1234] = -3;
    for (const [top_k, top_p] of [[2000, 0.5], [0, 0.5], [7, 0.5], [0, 1], [5, 0.9]] as const) {
      for (const row of [zeros, new Float32Array(3000).fill(-Infinity), oneFinite]) checked += check(new TopKTopPFilter(top_k, top_p), [row], `special top_k ${top_k} top_p ${top_p}`);
    }
    assert.equal(checked, 3 * 5 * 2 + 5 * 3);
  });

  it("filters typical rows of a 152k vocabulary", () => {
    const next = seededRandom(2024);
    let checked = 0;
    for (const filter of [new TopKTopPFilter(0, 0.9), new TopKTopPFilter(50, 0.9), new TopKTopPFilter(0, 0.999)]) {
      for (let r = 0; r < 6; r++) checked += check(filter, [kinds.peaked(next, 152064)], `peaked row ${r}, top_k ${filter.top_k} top_p ${filter.top_p}`);
    }
    assert.equal(checked, 18);
  });

  it("keeps the constructor's validation", () => {
    assert.throws(() => new TopKTopPFilter(0, 0), RangeError);
    assert.throws(() => new TopKTopPFilter(0, 1.5), RangeError);
    assert.throws(() => new TopKTopPFilter(-1, 0.9), RangeError);
    assert.throws(() => new TopKTopPFilter(2.5, 0.9), RangeError);
    const filter = new TopKTopPFilter(40, 0.95);
    assert.equal(filter.top_k, 40);
    assert.equal(filter.top_p, 0.95);
  });
});

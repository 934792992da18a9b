/**
 * TopKTopPFilter against the full-sort algorithm it replaced: median milliseconds per row.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/top_p.js [rows]
 */
import { Tensor } from "@huggingface/transformers";
import { TopKTopPFilter } from "../src/generation/logits_processors.js";
import { peakedLogits, seededRandom } from "../test/support/random.js";
import { median } from "./stats.js";

/** The previous implementation, verbatim but for the row loop: sorts the whole row. */
function baseline(top_k: number, top_p: number, data: Float32Array, vocab: number): void {
  const order = new Uint32Array(vocab);
  for (let offset = 0; offset < data.length; offset += vocab) {
    const row = data.subarray(offset, offset + vocab);
    for (let i = 0; i < vocab; i++) order[i] = i;
    order.sort((a, b) => row[b] - row[a]);
    const candidates = top_k > 0 ? Math.min(top_k, vocab) : vocab;
    const top = row[order[0]];
    let total = 0;
    for (let i = 0; i < candidates; i++) total += Math.exp(row[order[i]] - top);
    let kept = 0;
    for (let mass = 0; kept < candidates && mass < top_p * total; kept++) mass += Math.exp(row[order[kept]] - top);
    for (let i = Math.max(kept, 1); i < vocab; i++) row[order[i]] = -Infinity;
  }
}

const rowsOf: Record<string, (next: () => number, vocab: number) => Float32Array> = {
  /** Normal logits, std 3 to 5, plus 1 to 4 large ones. */
  peaked: peakedLogits,
  /** Nearly flat: uniform in [0, 0.01), distinct values. */
  flat(next, vocab) {
    return Float32Array.from({ length: vocab }, () => 0.01 * next());
  },
  /** All equal. */
  equal(_next, vocab) {
    return new Float32Array(vocab);
  },
};

const settings: Array<{ top_k: number; top_p: number; rows: string; note: string }> = [
  { top_k: 50, top_p: 0.9, rows: "peaked", note: "typical" },
  { top_k: 0, top_p: 0.9, rows: "peaked", note: "typical" },
  { top_k: 0, top_p: 0.999, rows: "peaked", note: "" },
  { top_k: 0, top_p: 0.9, rows: "flat", note: "worst case" },
  { top_k: 0, top_p: 0.9, rows: "equal", note: "" },
  { top_k: 0, top_p: 1, rows: "peaked", note: "nothing to filter" },
];

const count = Number(process.argv[2] ?? 15);
const lines: string[][] = [["vocab", "top_k", "top_p", "logits", "old ms", "new ms", "speed-up", "kept: old / new", ""]];
for (const vocab of [32000, 128256, 152064]) {
  for (const { top_k, top_p, rows, note } of settings) {
    const next = seededRandom(vocab + top_k + Math.round(top_p * 1000));
    const samples = Array.from({ length: count }, () => rowsOf[rows](next, vocab));
    const filter = new TopKTopPFilter(top_k, top_p);
    const time = (run: (data: Float32Array) => void, data: Float32Array) => {
      const started = process.hrtime.bigint();
      run(data);
      return Number(process.hrtime.bigint() - started) / 1e6;
    };
    const ours = (data: Float32Array) => void filter([], new Tensor("float32", data, [1, vocab]));
    const theirs = (data: Float32Array) => baseline(top_k, top_p, data, vocab);
    // Warm both up, and count the tokens each keeps (they may differ only where rounding decides a tie).
    let keptOld = 0;
    let keptNew = 0;
    for (const sample of samples) {
      const a = sample.slice();
      const b = sample.slice();
      ours(a);
      theirs(b);
      for (let i = 0; i < vocab; i++) {
        if (a[i] > -Infinity) keptNew++;
        if (b[i] > -Infinity) keptOld++;
      }
    }
    const newTimes: number[] = [];
    const oldTimes: number[] = [];
    for (let repeat = 0; repeat < 5; repeat++) for (const sample of samples) newTimes.push(time(ours, sample.slice()));
    for (const sample of samples) oldTimes.push(time(theirs, sample.slice()));
    const before = median(oldTimes);
    const after = median(newTimes);
    lines.push([String(vocab), String(top_k), String(top_p), rows, before.toFixed(2), after.toFixed(3), `${(before / after).toFixed(0)}x`, `${keptOld} / ${keptNew}`, note]);
  }
}
const widths = lines[0].map((_, c) => Math.max(...lines.map((line) => line[c].length)));
for (const line of lines) console.log(line.map((cell, c) => (c < 7 ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join("  ").trimEnd());
console.log(`\nmedian over ${count} rows (new: 5 passes over them); Node ${process.version}`);

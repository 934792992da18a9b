/**
 * Logits processors that cost the same at token 100,000 as at token 10.
 *
 * transformers.js 4.3.1 penalises repetition over every id of the sequence (`new Set(all ids)` at each
 * step: O(n) per token, O(n^2) per run), and it does not apply `top_p` at all (its TopPLogitsWarper has no
 * implementation). These replace both.
 */
import { LogitsProcessor, type Tensor } from "@huggingface/transformers";

/**
 * The repetition penalty of Hugging Face `generate()` (positive logits divided by `penalty`, negative ones
 * multiplied), applied to the tokens among the last `window` ids instead of the whole sequence: the tokens
 * an attention-sink cache still attends to. Each step updates per-token counts of a ring of ids, so a step
 * costs O(distinct tokens in the window), independent of the stream's length. Identical to the unbounded
 * penalty while the sequence is at most `window` long.
 */
export class WindowedRepetitionPenalty extends LogitsProcessor {
  private readonly rows: PenaltyWindow[] = [];

  constructor(
    readonly penalty: number,
    readonly window: number,
  ) {
    super();
    if (!(penalty > 0)) throw new RangeError(`repetition_penalty must be positive, got ${penalty}`);
    if (!Number.isInteger(window) || window < 1) throw new RangeError(`the repetition window must be a positive integer, got ${window}`);
  }

  override _call(input_ids: bigint[][], logits: Tensor): Tensor {
    const vocab = logits.dims.at(-1)!;
    const data = logits.data as Float32Array;
    input_ids.forEach((ids, row) => {
      const window = (this.rows[row] ??= new PenaltyWindow(this.window));
      window.advance(ids);
      window.penalize(data, row * vocab, vocab, this.penalty);
    });
    return logits;
  }
}

/** The distinct tokens among the last `size` ids of one growing sequence. */
export class PenaltyWindow {
  private readonly ring: Int32Array;
  private readonly counts = new Map<number, number>();
  private filled = 0;
  private next = 0;
  /** How many ids of the sequence have been seen. */
  private consumed = 0;

  constructor(size: number) {
    this.ring = new Int32Array(size);
  }

  /** Takes in the ids appended to `ids` since the last call (only the last `size` of a long first batch). */
  advance(ids: readonly bigint[]): void {
    for (let t = Math.max(this.consumed, ids.length - this.ring.length); t < ids.length; t++) this.add(Number(ids[t]));
    this.consumed = ids.length;
  }

  /** Applies the penalty to the window's tokens in the row of `vocab` logits at `offset`. */
  penalize(data: Float32Array, offset: number, vocab: number, penalty: number): void {
    for (const token of this.counts.keys()) {
      if (token >= vocab) continue;
      const value = data[offset + token];
      data[offset + token] = value < 0 ? value * penalty : value / penalty;
    }
  }

  /** Appends one id to the sequence. */
  add(token: number): void {
    if (this.filled === this.ring.length) {
      const old = this.ring[this.next];
      const left = this.counts.get(old)! - 1;
      if (left === 0) this.counts.delete(old);
      else this.counts.set(old, left);
    } else {
      this.filled++;
    }
    this.ring[this.next] = token;
    this.next = (this.next + 1) % this.ring.length;
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
  }
}

/** Buckets per unit of logit below the row's maximum, and how far down they reach. */
const BUCKETS_PER_LOGIT = 64;
/** exp(-40) is 4e-18: tokens further below the maximum cannot decide a nucleus the buckets leave open. */
const BUCKET_RANGE = 40;
/** A crossing bucket with more tokens than this is split again before its tokens are sorted. */
const MAX_SORTED = 2048;
const SPLIT_BUCKETS = 4096;

/**
 * Top-k then top-p (nucleus) filtering, as Hugging Face applies them: keeps the `top_k` most likely tokens
 * (all when 0), then the fewest of those whose probabilities sum to at least `top_p`; every other logit
 * becomes -Infinity. Run it after the temperature, before the sampler draws.
 *
 * Nothing sorts the vocabulary: top-k keeps its k best in a heap; a nucleus over the whole vocabulary
 * buckets the probabilities by logit in one pass, and only the bucket where the running mass crosses
 * `top_p` is split further and sorted.
 */
export class TopKTopPFilter extends LogitsProcessor {
  private heap = new Int32Array(0);
  private readonly buckets = new Float64Array(Math.max(BUCKETS_PER_LOGIT * BUCKET_RANGE, SPLIT_BUCKETS));
  private crossing = new Int32Array(0);

  constructor(
    readonly top_k: number,
    readonly top_p: number,
  ) {
    super();
    if (!(top_p > 0 && top_p <= 1)) throw new RangeError(`top_p must be in (0, 1], got ${top_p}`);
    if (!Number.isInteger(top_k) || top_k < 0) throw new RangeError(`top_k must be a non-negative integer, got ${top_k}`);
  }

  override _call(_input_ids: bigint[][], logits: Tensor): Tensor {
    const vocab = logits.dims.at(-1)!;
    const data = logits.data as Float32Array;
    for (let offset = 0; offset < data.length; offset += vocab) {
      const row = data.subarray(offset, offset + vocab);
      if (this.top_k > 0 && this.top_k < vocab) this.topK(row, this.top_k);
      else if (this.top_p < 1) this.nucleus(row);
    }
    return logits;
  }

  /** Keeps the k best (ties to the lower id), then the nucleus among them; masks the rest. */
  private topK(row: Float32Array, k: number): void {
    if (this.heap.length < k) this.heap = new Int32Array(k);
    const heap = this.heap;
    // A min-heap of the best k so far, its root the worst of them; a later token must beat it strictly.
    const worse = (a: number, b: number) => row[a] < row[b] || (row[a] === row[b] && a > b);
    const siftDown = () => {
      for (let i = 0; ; ) {
        const left = 2 * i + 1;
        if (left >= k) return;
        const child = left + 1 < k && worse(heap[left + 1], heap[left]) ? left + 1 : left;
        if (!worse(heap[child], heap[i])) return;
        const swap = heap[i];
        heap[i] = heap[child];
        heap[child] = swap;
        i = child;
      }
    };
    const best = Array.from({ length: k }, (_, t) => t).sort((a, b) => row[b] - row[a] || a - b);
    // Sorted descending is a max-heap; reversed it is a valid min-heap.
    for (let i = 0; i < k; i++) heap[i] = best[k - 1 - i];
    let floor = row[heap[0]];
    for (let t = k; t < row.length; t++) {
      if (!(row[t] > floor)) continue;
      heap[0] = t;
      siftDown();
      floor = row[heap[0]];
    }
    const chosen = Array.from(heap.subarray(0, k)).sort((a, b) => row[b] - row[a] || a - b);
    const top = row[chosen[0]];
    let total = 0;
    for (const token of chosen) total += Math.exp(row[token] - top);
    let kept = this.top_p < 1 ? 0 : k;
    for (let mass = 0; kept < k && mass < this.top_p * total; kept++) mass += Math.exp(row[chosen[kept]] - top);
    const keep = chosen.slice(0, Math.max(kept, 1));
    const values = keep.map((token) => row[token]);
    row.fill(-Infinity);
    keep.forEach((token, i) => (row[token] = values[i]));
  }

  /** The nucleus over the whole row. */
  private nucleus(row: Float32Array): void {
    let max = -Infinity;
    for (let t = 0; t < row.length; t++) if (row[t] > max) max = row[t];
    if (!Number.isFinite(max)) return;
    const buckets = this.buckets.fill(0);
    const last = BUCKETS_PER_LOGIT * BUCKET_RANGE;
    let total = 0;
    for (let t = 0; t < row.length; t++) {
      const gap = max - row[t];
      const p = Math.exp(-gap);
      total += p;
      if (gap < BUCKET_RANGE) buckets[Math.floor(gap * BUCKETS_PER_LOGIT)] += p;
    }
    const target = this.top_p * total;
    let above = 0;
    let crossing = 0;
    while (crossing < last && above + buckets[crossing] < target) above += buckets[crossing++];
    if (crossing === last) return; // the nucleus reaches past the buckets: it is all but a negligible tail
    if (this.crossing.length < row.length) this.crossing = new Int32Array(row.length);
    const list = this.crossing;
    let count = 0;
    for (let t = 0; t < row.length; t++) {
      const gap = max - row[t];
      const bucket = gap < BUCKET_RANGE ? Math.floor(gap * BUCKETS_PER_LOGIT) : last;
      if (bucket === crossing) list[count++] = t;
      else if (bucket > crossing) row[t] = -Infinity;
    }
    // A bucket holding many tokens (a flat row) is split over its own range until few remain.
    let equal = false;
    while (count > MAX_SORTED && !equal) {
      let low = Infinity;
      let high = -Infinity;
      for (let i = 0; i < count; i++) {
        low = Math.min(low, row[list[i]]);
        high = Math.max(high, row[list[i]]);
      }
      equal = low === high;
      if (equal) break;
      const scale = (SPLIT_BUCKETS - 1) / (high - low);
      const split = buckets.fill(0, 0, SPLIT_BUCKETS);
      for (let i = 0; i < count; i++) split[Math.floor((high - row[list[i]]) * scale)] += Math.exp(row[list[i]] - max);
      let sub = 0;
      while (above + split[sub] < target) above += split[sub++];
      let kept = 0;
      for (let i = 0; i < count; i++) {
        const token = list[i];
        const at = Math.floor((high - row[token]) * scale);
        if (at === sub) list[kept++] = token;
        else if (at > sub) row[token] = -Infinity;
      }
      count = kept;
    }
    // Equal logits rank by id, the order they were listed in.
    const candidates = equal ? list.subarray(0, count) : Array.from(list.subarray(0, count)).sort((a, b) => row[b] - row[a] || a - b);
    let kept = 0;
    for (let mass = above; kept < candidates.length && mass < target; kept++) mass += Math.exp(row[candidates[kept]] - max);
    for (let i = Math.max(kept, above > 0 ? 0 : 1); i < candidates.length; i++) row[candidates[i]] = -Infinity;
  }
}

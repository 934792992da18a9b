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

/**
 * Top-k then top-p (nucleus) filtering, as Hugging Face applies them: keeps the `top_k` most likely tokens
 * (all when 0), then the fewest of those whose probabilities sum to at least `top_p`; every other logit
 * becomes -Infinity. Run it after the temperature, before the sampler draws.
 */
export class TopKTopPFilter extends LogitsProcessor {
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
    const order = new Uint32Array(vocab);
    for (let offset = 0; offset < data.length; offset += vocab) {
      const row = data.subarray(offset, offset + vocab);
      for (let i = 0; i < vocab; i++) order[i] = i;
      order.sort((a, b) => row[b] - row[a]);
      const candidates = this.top_k > 0 ? Math.min(this.top_k, vocab) : vocab;
      const top = row[order[0]];
      let total = 0;
      for (let i = 0; i < candidates; i++) total += Math.exp(row[order[i]] - top);
      let kept = 0;
      for (let mass = 0; kept < candidates && mass < this.top_p * total; kept++) mass += Math.exp(row[order[kept]] - top);
      for (let i = Math.max(kept, 1); i < vocab; i++) row[order[i]] = -Infinity;
    }
    return logits;
  }
}

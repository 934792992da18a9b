/**
 * Choosing each generated token from the logits, in Hugging Face's order: repetition penalty, the
 * `min_new_tokens` end-of-sequence ban, then greedy argmax, or temperature, top-k and top-p and a draw from
 * the seeded `random` of transformers.js. Each step costs O(vocabulary), whatever the stream's length.
 */
import { random, Tensor } from "@huggingface/transformers";
import { PenaltyWindow, TopKTopPFilter } from "./logits_processors.js";

export interface SamplingOptions {
  /** Sample instead of decoding greedily (default false). */
  do_sample?: boolean;
  /** Softmax temperature when sampling (default 1). */
  temperature?: number;
  /** Sample among the k most likely tokens; 0 for all (default 50, as in transformers). */
  top_k?: number;
  /** Sample among the fewest tokens whose probabilities sum to top_p (default 1: off). */
  top_p?: number;
  /** Penalty on the tokens of the last `repetition_window` ids (default 1: off). */
  repetition_penalty?: number;
}

export interface ChoiceOptions extends SamplingOptions {
  /** End-of-sequence tokens are banned until this many tokens are generated. */
  min_new_tokens?: number;
}

export class TokenChooser {
  private readonly penalty: { window: PenaltyWindow; size: number; factor: number } | null;
  private readonly filter: TopKTopPFilter | null;
  private readonly sample: boolean;
  private readonly temperature: number;
  private readonly minNewTokens: number;

  constructor(
    options: ChoiceOptions,
    repetitionWindow: number,
    private readonly eosTokens: ReadonlySet<number>,
  ) {
    const { do_sample = false, temperature = 1, top_k = 50, top_p = 1, repetition_penalty = 1 } = options;
    if (!(temperature > 0)) throw new RangeError(`temperature must be greater than 0, got ${temperature}`);
    if (!(repetition_penalty > 0)) throw new RangeError(`repetition_penalty must be positive, got ${repetition_penalty}`);
    this.penalty = repetition_penalty === 1 ? null : { window: new PenaltyWindow(repetitionWindow), size: repetitionWindow, factor: repetition_penalty };
    this.sample = do_sample;
    this.temperature = temperature;
    this.filter = do_sample && (top_k > 0 || top_p < 1) ? new TopKTopPFilter(top_k, top_p) : null;
    this.minNewTokens = options.min_new_tokens ?? 0;
  }

  /** Takes in tokens fed to the stream (the repetition penalty looks at them). */
  observe(tokens: readonly number[]): void {
    if (!this.penalty) return;
    // Only the last `size` can still be in the window.
    for (let i = Math.max(0, tokens.length - this.penalty.size); i < tokens.length; i++) this.penalty.window.add(tokens[i]);
  }

  /** The next token, from `logits` (modified in place) after `generated` tokens of this turn. */
  choose(logits: Float32Array, generated: number): number {
    if (this.penalty) this.penalty.window.penalize(logits, 0, logits.length, this.penalty.factor);
    if (generated < this.minNewTokens) for (const eos of this.eosTokens) if (eos < logits.length) logits[eos] = -Infinity;
    const token = this.sample ? this.draw(logits) : argmax(logits);
    this.penalty?.window.add(token);
    return token;
  }

  private draw(logits: Float32Array): number {
    if (this.temperature !== 1) for (let i = 0; i < logits.length; i++) logits[i] /= this.temperature;
    if (this.filter) this.filter._call([], new Tensor("float32", logits, [1, logits.length]));
    let max = -Infinity;
    for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
    let total = 0;
    for (let i = 0; i < logits.length; i++) total += Math.exp(logits[i] - max);
    if (Number.isNaN(total)) throw nanLogits();
    let threshold = (random.random() as number) * total;
    let last = 0;
    for (let i = 0; i < logits.length; i++) {
      if (logits[i] === -Infinity) continue;
      last = i;
      threshold -= Math.exp(logits[i] - max);
      if (threshold < 0) return i;
    }
    return last;
  }
}

function argmax(logits: Float32Array): number {
  let best = 0;
  let nan = Number.isNaN(logits[0]);
  for (let i = 1; i < logits.length; i++) {
    if (logits[i] > logits[best]) best = i;
    else if (logits[i] !== logits[i]) nan = true;
  }
  if (nan) throw nanLogits();
  return best;
}

function nanLogits(): RangeError {
  return new RangeError("the model returned NaN logits: its weights or config hold non-finite values");
}

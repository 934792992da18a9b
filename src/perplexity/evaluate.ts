/**
 * Token-by-token perplexity, as the StreamingLLM benchmark measures it: each token goes through the model's
 * cache alone, and the logits after token i score token i + 1.
 */
import type { StreamingBackend } from "../backend/backend.js";

/** What the evaluation needs of a stream. */
export type TokenStream = Pick<StreamingBackend, "feed" | "stats">;

/** One evaluated token: a row of the benchmark CSV. */
export interface TokenRecord {
  /** Tokens fed to the stream so far, the one whose logits were scored included. */
  input_length: number;
  /** Negative log-likelihood of the next token, in nats. */
  nll: number;
  /** exp(nll). */
  ppl: number;
  /** exp of the mean nll of every token evaluated so far. */
  overall_ppl: number;
  kv_cache_bytes: number;
  /** Resident set size of the process. */
  rss_bytes: number;
  /** Seconds spent on this token: the forward pass and its loss. */
  latency: number;
}

export interface EvaluationOptions {
  /** Stop after this many evaluated tokens. */
  num_tokens: number;
  /** Called after every evaluated token. */
  onToken?: (record: TokenRecord) => void;
  /** Stops after the token in flight (an interrupted run). */
  signal?: AbortSignal;
}

export interface EvaluationResult {
  tokens: number;
  mean_nll: number;
  overall_ppl: number;
  /** Time spent in the forward passes and losses (the sum of the latencies). */
  seconds: number;
  /** True when `signal` stopped the run before `num_tokens` (or the end of the data). */
  interrupted: boolean;
}

/** Negative log-likelihood of `target` under `logits` (a log-softmax computed in float64). */
export function tokenNll(logits: Float32Array, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return Math.log(sum) + max - logits[target];
}

/**
 * Streams every sample through `stream`, one token at a time. As in the seed, samples continue one stream
 * (the cache is not reset between them) and the last token of a sample is only a target, never fed.
 */
export async function evaluatePerplexity(
  stream: TokenStream,
  samples: Iterable<readonly number[]> | AsyncIterable<readonly number[]>,
  options: EvaluationOptions,
): Promise<EvaluationResult> {
  let tokens = 0;
  let nllSum = 0;
  let seconds = 0;
  const result = (interrupted: boolean): EvaluationResult => {
    const mean_nll = tokens === 0 ? NaN : nllSum / tokens;
    return { tokens, mean_nll, overall_ppl: Math.exp(mean_nll), seconds, interrupted };
  };
  for await (const ids of samples) {
    for (let i = 0; i + 1 < ids.length; i++) {
      if (tokens >= options.num_tokens) return result(false);
      if (options.signal?.aborted) return result(true);
      const start = performance.now();
      const logits = await stream.feed([ids[i]]);
      if (ids[i + 1] < 0 || ids[i + 1] >= logits.length) {
        throw new RangeError(`token id ${ids[i + 1]} is outside the model's vocabulary of ${logits.length}`);
      }
      const nll = tokenNll(logits, ids[i + 1]);
      if (Number.isNaN(nll)) {
        throw new RangeError(`the model returned NaN logits at token ${tokens + 1}: its weights or config hold non-finite values`);
      }
      const latency = (performance.now() - start) / 1000;
      tokens++;
      nllSum += nll;
      seconds += latency;
      options.onToken?.({
        input_length: tokens,
        nll,
        ppl: Math.exp(nll),
        overall_ppl: Math.exp(nllSum / tokens),
        kv_cache_bytes: stream.stats().kv_cache_bytes,
        rss_bytes: process.memoryUsage.rss(),
        latency,
      });
    }
  }
  return result(false);
}

/**
 * A text-generation session: one cache carried across `generate()` calls, text streamed as it becomes final,
 * and per-token work that does not grow with the stream (bounded detokenization, a windowed repetition
 * penalty, no per-token walk over the ids generated so far), so an attention-sink model streams 100,000
 * tokens in constant memory apart from the ids transformers.js itself keeps (8 bytes per token).
 */
import {
  BaseStreamer,
  DynamicCache,
  InterruptableStoppingCriteria,
  LogitsProcessorList,
  type PreTrainedModel,
  type TextStreamer,
  type PreTrainedTokenizer,
  type Tensor,
} from "@huggingface/transformers";
import type { SinkCacheStats } from "../cache/sink_cache.js";
import { cacheStats } from "../transformers/stream_registry.js";
import { TopKTopPFilter, WindowedRepetitionPenalty } from "./logits_processors.js";
import { IncrementalTextDecoder } from "./text_decoder.js";

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

export interface TurnOptions extends SamplingOptions {
  max_new_tokens: number;
  /** End-of-sequence tokens are suppressed until this many tokens are generated (default 0). */
  min_new_tokens?: number;
  /** Stop once the text contains one of these; the stop string and what follows are not emitted. */
  stop_strings?: readonly string[];
  /** Receives each piece of final text, in order. */
  onText?: (text: string) => void;
  /** Called after each generated token with the count so far. */
  onToken?: (generated: number) => void;
}

export type StopReason = "max_new_tokens" | "eos" | "stop_string" | "interrupted";

export interface TurnResult {
  prompt_tokens: number;
  new_tokens: number;
  stopped: StopReason;
  /** The last token generated (null when none was). */
  last_token: bigint | null;
  seconds: number;
}

export interface SessionOptions {
  /** How many of the latest ids the repetition penalty looks at: use the cache's sink + window size. */
  repetition_window: number;
}

export class GenerationSession {
  private cache = new DynamicCache();
  private readonly interruption = new InterruptableStoppingCriteria();
  private readonly eosTokens: Set<bigint>;

  constructor(
    readonly model: PreTrainedModel,
    readonly tokenizer: PreTrainedTokenizer,
    readonly options: SessionOptions,
  ) {
    type EosConfig = { eos_token_id?: number | number[] | null } | null;
    const eos = (model.generation_config as EosConfig)?.eos_token_id ?? (model.config as EosConfig)?.eos_token_id;
    this.eosTokens = new Set([eos ?? []].flat().map((id) => BigInt(id)));
  }

  /** Whether the model streams through an attention-sink cache (and so can run turn after turn). */
  get streaming(): boolean {
    return "attention_sinks" in this.model;
  }

  /** Stops the running turn after its current token. Only sets a flag: safe from a signal handler. */
  interrupt(): void {
    this.interruption.interrupt();
  }

  /** Starts a new stream on an empty cache. */
  reset(): void {
    this.cache = new DynamicCache();
  }

  /** The cache's counters; for a plain transformers.js cache, every streamed token stays cached. */
  stats(): SinkCacheStats {
    return cacheStats(this.cache);
  }


  /**
   * Generates a continuation of `input_ids` ([1, n]) on the session's cache: the whole text so far on the
   * first turn, then only the new tokens of each later turn.
   */
  async generate(input_ids: Tensor, options: TurnOptions): Promise<TurnResult> {
    if (!this.streaming && this.stats().seen_tokens > 0) {
      throw new Error("only a model with attention sinks continues a stream over several turns: reset() the session first");
    }
    const { do_sample = false, temperature = 1, top_k = 50, top_p = 1, repetition_penalty = 1 } = options;
    const processors = new LogitsProcessorList();
    if (repetition_penalty !== 1) processors.push(new WindowedRepetitionPenalty(repetition_penalty, this.options.repetition_window));
    if (do_sample && top_p < 1) processors.push(new TopKTopPFilter(top_k, top_p));
    const stopString = new InterruptableStoppingCriteria();
    const streamer = new TurnStreamer(this.tokenizer, options, () => stopString.interrupt());
    this.interruption.reset();
    const started = performance.now();
    await this.model.generate({
      input_ids,
      max_new_tokens: options.max_new_tokens,
      min_new_tokens: options.min_new_tokens || undefined,
      do_sample,
      temperature,
      top_k,
      // transformers.js's own penalty walks every id at every step; the windowed one above replaces it.
      repetition_penalty: 1,
      logits_processor: processors,
      stopping_criteria: [this.interruption, stopString],
      // GenerationConfig types its `streamer` as a TextStreamer; generate() only calls put() and end().
      streamer: streamer as unknown as TextStreamer,
      past_key_values: this.cache,
    });
    const last = streamer.lastToken;
    return {
      prompt_tokens: input_ids.dims[1],
      new_tokens: streamer.generated,
      stopped: this.interruption.interrupted
        ? "interrupted"
        : stopString.interrupted
          ? "stop_string"
          : last !== null && this.eosTokens.has(last)
            ? "eos"
            : "max_new_tokens",
      last_token: last,
      seconds: (performance.now() - started) / 1000,
    };
  }
}

/** Receives generate()'s tokens: the prompt first (context only), then one new token per step. */
class TurnStreamer extends BaseStreamer {
  generated = 0;
  lastToken: bigint | null = null;
  private prompt = true;
  private readonly decoder: IncrementalTextDecoder;
  private readonly stops: StopStringFilter;

  constructor(
    tokenizer: PreTrainedTokenizer,
    private readonly options: TurnOptions,
    onStop: () => void,
  ) {
    super();
    this.decoder = new IncrementalTextDecoder(tokenizer);
    this.stops = new StopStringFilter(options.stop_strings ?? [], onStop);
  }

  override put(value: bigint[][]): void {
    if (this.prompt) {
      this.prompt = false;
      this.decoder.setContext(value[0]);
      return;
    }
    const token = value[0][0];
    this.generated++;
    this.lastToken = token;
    this.emit(this.decoder.push(token));
    this.options.onToken?.(this.generated);
  }

  override end(): void {
    this.emit(this.decoder.flush());
    this.emit(this.stops.flush());
  }

  private emit(text: string): void {
    const final = this.stops.push(text);
    if (final) this.options.onText?.(final);
  }
}

/** Holds back text that may be the start of a stop string (at most the longest stop string's length). */
class StopStringFilter {
  private held = "";
  private stopped = false;

  constructor(
    private readonly stops: readonly string[],
    private readonly onStop: () => void,
  ) {}

  push(text: string): string {
    if (this.stopped || this.stops.length === 0) return this.stopped ? "" : text;
    this.held += text;
    const found = Math.min(...this.stops.map((stop) => this.held.indexOf(stop)).filter((at) => at >= 0));
    if (Number.isFinite(found)) {
      const out = this.held.slice(0, found);
      this.held = "";
      this.stopped = true;
      this.onStop();
      return out;
    }
    let keep = 0;
    for (const stop of this.stops) {
      for (let k = Math.min(stop.length - 1, this.held.length); k > keep; k--) {
        if (this.held.endsWith(stop.slice(0, k))) {
          keep = k;
          break;
        }
      }
    }
    const out = this.held.slice(0, this.held.length - keep);
    this.held = this.held.slice(this.held.length - keep);
    return out;
  }

  flush(): string {
    const out = this.stopped ? "" : this.held;
    this.held = "";
    return out;
  }
}

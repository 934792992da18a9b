/**
 * A text-generation session on one stream of a {@link StreamingBackend}: turn after turn on the same cache,
 * text streamed as it becomes final, and per-token work that does not grow with the stream (bounded
 * detokenization, a windowed repetition penalty, no list of every id generated), so an attention-sink model
 * streams a million tokens in constant memory.
 */
import type { StreamingBackend, TextTokenizer } from "../backend/backend.js";
import type { SinkCacheStats } from "../cache/sink_cache.js";
import { TokenChooser, type SamplingOptions } from "./decoding.js";
import { IncrementalTextDecoder } from "./text_decoder.js";

export type { SamplingOptions } from "./decoding.js";

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
  /** The stop string that ended the turn (when `stopped` is "stop_string"). */
  stop_string: string | null;
  /** The last token generated (null when none was). */
  last_token: bigint | null;
  /** Seconds of the whole turn: prefill and generation. */
  seconds: number;
  /** Seconds spent feeding the prompt, until the first token could be chosen. */
  prefill_seconds: number;
  /** Seconds spent generating after the prefill. */
  generation_seconds: number;
}

export interface SavedSession {
  /** The backend's snapshot() of the stream. */
  stream: Uint8Array;
  pending_token: number | null;
}

export interface SessionOptions {
  /** How many of the latest ids the repetition penalty looks at (default: the backend's sink + window). */
  repetition_window?: number;
}

export class GenerationSession {
  private interrupted = false;
  /** Aborts the running turn's prefill between chunks. */
  private prefill: AbortController | null = null;
  /** The last token generated, which is not fed until the next turn continues the stream with it. */
  private pending: number | null = null;
  private readonly eosTokens: ReadonlySet<number>;
  private readonly repetitionWindow: number;

  constructor(
    readonly backend: StreamingBackend,
    options: SessionOptions = {},
  ) {
    this.eosTokens = new Set(backend.eos_token_ids);
    this.repetitionWindow = options.repetition_window ?? backend.window_tokens;
  }

  get tokenizer(): TextTokenizer {
    return this.backend.tokenizer;
  }

  /** Whether the stream goes on turn after turn (an attention-sink cache), or needs a reset() between turns. */
  get streaming(): boolean {
    return this.backend.endless;
  }

  /** Stops the running turn after its current token. Only sets a flag: safe from a signal handler. */
  interrupt(): void {
    this.interrupted = true;
    this.prefill?.abort();
  }

  /** Starts a new stream on an empty cache. */
  reset(): void {
    this.backend.reset();
    this.pending = null;
  }

  stats(): SinkCacheStats {
    return this.backend.stats();
  }

  /** The stream and the token generated last but not fed yet: all the session needs to go on later or elsewhere. */
  save(): SavedSession {
    return { stream: this.backend.snapshot(), pending_token: this.pending };
  }

  /** Goes on from a {@link save} (of a session on the same model and cache settings); throws StateRecordError for a bad one. */
  restore(saved: SavedSession): void {
    this.backend.restore(saved.stream);
    this.pending = saved.pending_token;
  }

  /**
   * Generates a continuation of `input_ids` on the session's stream: the whole text so far on the first
   * turn, then only the new tokens of each later turn.
   */
  async generate(input_ids: readonly number[], options: TurnOptions): Promise<TurnResult> {
    if (!this.streaming && this.stats().seen_tokens > 0) {
      throw new Error("only a model with attention sinks continues a stream over several turns: reset() the session first");
    }
    if (input_ids.length === 0 && this.pending === null) throw new RangeError("the turn has no tokens to feed");
    const chooser = new TokenChooser(options, this.repetitionWindow, this.eosTokens);
    const text = new TurnText(this.tokenizer, options);
    const started = performance.now();
    this.interrupted = false;
    const fed = this.pending === null ? input_ids : [this.pending, ...input_ids];
    chooser.observe(fed);
    text.setContext(fed.slice(-16));
    this.prefill = new AbortController();
    let logits: Float32Array;
    try {
      logits = await this.backend.feed(fed, { signal: this.prefill.signal });
    } catch (error) {
      if (!this.prefill.signal.aborted) throw error;
      // Stopped between chunks: the stream keeps the part of the prompt it was fed.
      this.pending = null;
      const seconds = (performance.now() - started) / 1000;
      return { prompt_tokens: input_ids.length, new_tokens: 0, stopped: "interrupted", stop_string: null, last_token: null, seconds, prefill_seconds: seconds, generation_seconds: 0 };
    } finally {
      this.prefill = null;
    }
    const prefilled = performance.now();
    let generated = 0;
    let last: number | null = null;
    let stopped: StopReason = "max_new_tokens";
    for (;;) {
      last = chooser.choose(logits, generated);
      generated++;
      this.pending = last;
      text.push(last);
      options.onToken?.(generated);
      if (this.interrupted) stopped = "interrupted";
      else if (text.stopped) stopped = "stop_string";
      else if (this.eosTokens.has(last)) stopped = "eos";
      else if (generated < options.max_new_tokens) {
        logits = await this.backend.feed([last]);
        continue;
      }
      break;
    }
    text.end();
    const ended = performance.now();
    return {
      prompt_tokens: input_ids.length,
      new_tokens: generated,
      stopped,
      stop_string: stopped === "stop_string" ? text.stop_string : null,
      last_token: BigInt(last),
      seconds: (ended - started) / 1000,
      prefill_seconds: (prefilled - started) / 1000,
      generation_seconds: (ended - prefilled) / 1000,
    };
  }
}

/** A turn's text: detokenized as tokens arrive, held back where a stop string may begin. */
class TurnText {
  private readonly decoder: IncrementalTextDecoder;
  private readonly stops: StopStringFilter;

  constructor(
    tokenizer: TextTokenizer,
    private readonly options: TurnOptions,
  ) {
    this.decoder = new IncrementalTextDecoder(tokenizer);
    this.stops = new StopStringFilter(options.stop_strings ?? []);
  }

  get stopped(): boolean {
    return this.stops.stopped;
  }

  get stop_string(): string | null {
    return this.stops.matched;
  }

  setContext(ids: readonly number[]): void {
    this.decoder.setContext(ids.map(BigInt));
  }

  push(token: number): void {
    this.emit(this.decoder.push(BigInt(token)));
  }

  end(): void {
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
  stopped = false;
  /** The stop string found (the one that starts first). */
  matched: string | null = null;

  constructor(private readonly stops: readonly string[]) {}

  push(text: string): string {
    if (this.stopped || this.stops.length === 0) return this.stopped ? "" : text;
    this.held += text;
    const found = Math.min(...this.stops.map((stop) => this.held.indexOf(stop)).filter((at) => at >= 0));
    if (Number.isFinite(found)) {
      this.matched = this.stops.find((stop) => this.held.indexOf(stop) === found)!;
      const out = this.held.slice(0, found);
      this.held = "";
      this.stopped = true;
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

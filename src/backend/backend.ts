/**
 * The seam between an inference engine and everything built on a stream (generation, chat, the perplexity
 * evaluator): feed tokens, get the logits that predict the next one, read the cache's counters, start over.
 * The transformers.js integration implements it (src/transformers/backend.ts); another engine plugs in by
 * implementing it too.
 */
import type { SinkCacheStats } from "../cache/sink_cache.js";
import type { AttentionSinkSettings } from "../cache/streaming_policy.js";

/** A chat message, as chat templates take them. */
export interface ChatMessage {
  role: string;
  content: string;
}

/** What generation and the benchmark need of a tokenizer (transformers.js tokenizers have all of it). */
export interface TextTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): number[];
  decode(ids: number[] | bigint[], options?: { skip_special_tokens?: boolean }): string;
  /** The start-of-sequence token id, when the tokenizer has one. */
  readonly bos_token_id?: number | null;
  /** Whether the tokenizer's config asks for a BOS token before every text. */
  readonly add_bos_token?: boolean;
  /** Whether the model has a chat template. */
  readonly has_chat_template: boolean;
  /** Renders a conversation with the model's chat template (only when it has one). */
  renderChat(messages: readonly ChatMessage[], add_generation_prompt: boolean): string;
}

export interface FeedOptions {
  /**
   * Stops a long input between the chunks it is fed in: the stream keeps the tokens fed so far, and the
   * call rejects with the signal's reason.
   */
  signal?: AbortSignal;
}

export interface StreamingBackend {
  /** The model's family (`config.json`'s `model_type`). */
  readonly model_type: string;
  readonly tokenizer: TextTokenizer;
  /** Tokens that end a text. */
  readonly eos_token_ids: readonly number[];
  /** The sink cache's sizes, or null for a dense cache that keeps every token. */
  readonly attention_sinks: AttentionSinkSettings | null;
  /** The most tokens attention sees: sink + window (for a dense cache, what it would see with sinks). */
  readonly window_tokens: number;
  /** Whether the stream may go on past its cache (false for a dense cache: reset between texts). */
  readonly endless: boolean;
  /**
   * Feeds tokens to the stream, in order; resolves to the logits over the vocabulary that predict the next
   * token. The array is the caller's to modify and is valid until the next call.
   */
  feed(tokens: readonly number[], options?: FeedOptions): Promise<Float32Array>;
  /** The cache's counters now. */
  stats(): SinkCacheStats;
  /** Starts a new stream on an empty cache. */
  reset(): void;
  /**
   * The stream's whole state (KV cache and bookkeeping) as a self-checking record: constant in size once an
   * attention-sink cache is full. The stream goes on unchanged.
   */
  snapshot(): Uint8Array;
  /**
   * Replaces the stream with one a snapshot() of a backend of the same model and cache settings took; a record
   * that is corrupt or from another model throws a StateRecordError and leaves the current stream as it was.
   */
  restore(state: Uint8Array): void;
}

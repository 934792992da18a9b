/**
 * Which stream each transformers.js cache object carries. A `DynamicCache` holds only tensors (as in
 * transformers.js); the slot bookkeeping and the turn bookkeeping of a stream live here, keyed by the cache.
 */
import type { DynamicCache, Tensor } from "@huggingface/transformers";
import type { SinkCacheState, SinkCacheStats } from "../cache/sink_cache.js";
import type { Transcript } from "./transcript.js";

export interface Stream {
  /** The settings the stream was started with: another model may continue it only with the same ones. */
  readonly signature: string;
  readonly slots: SinkCacheState;
  readonly transcript: Transcript;
}

const streams = new WeakMap<object, Stream>();

export function streamOf(cache: DynamicCache): Stream | undefined {
  return streams.get(cache);
}

export function registerStream(cache: DynamicCache, stream: Stream): void {
  streams.set(cache, stream);
}

/** Counters of a cache filled by a streaming model (null for a cache no streaming model has used). */
export function sinkCacheStats(cache: DynamicCache): SinkCacheStats | null {
  return streams.get(cache)?.slots.stats ?? null;
}

/**
 * Counters of any cache: a streaming one's, or a plain transformers.js cache's, where every token streamed
 * stays cached (so its buffers are its cache).
 */
export function cacheStats(cache: DynamicCache): SinkCacheStats {
  const sink = sinkCacheStats(cache);
  if (sink) return sink;
  let bytes = 0;
  let tokens = 0;
  for (const [name, tensor] of Object.entries(cache as unknown as Record<string, Tensor>)) {
    if (!name.startsWith("past_key_values.")) continue;
    bytes += (tensor.data as ArrayLike<number> & { byteLength: number }).byteLength;
    tokens = tensor.dims.at(-2) ?? 0;
  }
  return { seen_tokens: tokens, cached_tokens: tokens, kv_cache_bytes: bytes, kv_buffer_bytes: bytes };
}

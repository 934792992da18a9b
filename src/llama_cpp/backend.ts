/**
 * The llama.cpp implementation of {@link StreamingBackend}, on node-llama-cpp: a GGUF model streams with the
 * same options and contract as the onnxruntime path (the first `attention_sink_size` tokens kept, the most
 * recent `attention_sink_window_size`, positions relative to the cache, long inputs chunked by the same rule).
 *
 * llama.cpp's cache cells carry positions; moving cells makes its next decode re-rotate their keys (its
 * K-shift), a pass over every cell of the cache whichever cells moved (unmoved ones turn by zero, exactly).
 * So moving the sinks up behind a window that stays put, as the onnxruntime path does, would cost as much
 * per token as moving the window down, and would re-round the sink keys on every token of an endless
 * stream. Here the sinks never move: each eviction removes the oldest window cells and shifts the rest of
 * the window down behind the sinks, so a key is re-rounded at most once per token it stays in the window
 * and every query sees sinks and window at contiguous positions from 0. Without sinks only distances within
 * the window matter: it keeps its positions and moves down once per `capacity` tokens, which keeps
 * positions small enough that their RoPE angles stay exact in float32.
 */
import { availableParallelism } from "node:os";
import { LlamaTokenizer } from "@huggingface/transformers";
import type { FeedOptions, StreamingBackend } from "../backend/backend.js";
import { experimentCache, type CacheSizes, type Experiment } from "../backend/experiments.js";
import { AttentionSinkOptionError, DEFAULT_ATTENTION_SINK_WINDOW_SIZE, resolveSinkPolicy, type SinkPolicy } from "../cache/options.js";
import { nextChunkLength, type SinkCacheStats } from "../cache/sink_cache.js";
import type { AttentionSinkSettings } from "../cache/streaming_policy.js";
import { openFileSource } from "../convert/bounded_reader.js";
import { describeGgufModel } from "../convert/gguf_llama.js";
import { resolveGgufSource, type ResolveModelSourceOptions } from "../convert/index.js";
import { TransformersTokenizer } from "../transformers/backend.js";
import { nativeParts, sharedLlama, type NativeContext, type NativeSampler } from "./bindings.js";

export const KV_CACHE_TYPES = ["f32", "f16"] as const;
export type KvCacheType = (typeof KV_CACHE_TYPES)[number];

export interface LlamaCppLoadOptions extends CacheSizes, Pick<ResolveModelSourceOptions, "tokenizer" | "onConvert"> {
  experiment?: Experiment;
  /**
   * The KV cache's element type. `f32` (the default) reproduces the onnxruntime path's per-token NLL; `f16`
   * halves the cache, but every K-shift re-rounds the moved keys, so sinks drift from the exact stream.
   */
  kv_cache_type?: KvCacheType;
  /**
   * CPU threads llama.cpp computes with. Default: the CPUs this process may use (`os.availableParallelism()`);
   * more threads than that spin in llama.cpp's barriers and run many times slower.
   */
  threads?: number;
  /** Cells of a dense (`transformers`) cache, the most tokens it holds (default: the model's context length). */
  context_size?: number;
  /**
   * Advanced: once the cache is full, evict this many window tokens at a time (default 1, which keeps exactly
   * sink + window tokens on every step). Each eviction costs llama.cpp one K-shift over the whole cache; a
   * larger interval runs one per that many tokens, and tokens then attend to between
   * `sink + window - interval + 1` and `sink + window` tokens instead of always `sink + window`.
   */
  attention_sink_eviction_interval?: number;
}

/** The engine objects a stream holds. */
interface Engine {
  native: NativeContext;
  /** node-llama-cpp's sequence, held so that it is never reclaimed (which would clear the cache). */
  sequence: object;
  sequenceId: number;
  sampler: NativeSampler;
  dispose(): Promise<void>;
}

const NO_LOGITS = new Uint32Array(0);
const UNSAVABLE = "a llama.cpp stream cannot be saved yet; use --backend onnxruntime for server sessions and saved chats";
const LAST_TOKEN = new Uint32Array(1);

/** A stream through llama.cpp's KV cache: a sink cache when `policy` is given, else dense. */
export class LlamaCppStream implements StreamingBackend {
  readonly model_type = "llama";
  readonly endless: boolean;
  /** Sink tokens in the cache, at positions from 0 (fewer than the policy's only at the very start). */
  private sinks = 0;
  /** The position of the oldest window token. */
  private windowStart = 0;
  /** The position the next token takes. */
  private next = 0;
  private seen = 0;
  private readonly logits: Float32Array;
  /** The tokens of the pass being queued (a chunk never exceeds the cells). */
  private readonly batchTokens: Uint32Array;

  constructor(
    private readonly engine: Engine,
    readonly tokenizer: TransformersTokenizer,
    readonly eos_token_ids: readonly number[],
    private readonly policy: SinkPolicy | null,
    /** Window tokens evicted at a time once the cache is full. */
    private readonly evictionInterval: number,
    readonly window_tokens: number,
    /** Cells the context holds. */
    private readonly cells: number,
    private readonly bytesPerToken: number,
    vocabSize: number,
  ) {
    this.endless = policy !== null;
    this.logits = new Float32Array(vocabSize);
    this.batchTokens = new Uint32Array(cells);
  }

  get attention_sinks(): AttentionSinkSettings | null {
    // Evicted cells are removed at once: nothing waits for compaction.
    return this.policy && { ...this.policy, compaction_interval: 0, model_type: this.model_type, positions: "rope" };
  }

  /** Tokens attention sees now. */
  private get attended(): number {
    return this.sinks + this.next - this.windowStart;
  }

  async feed(tokens: readonly number[], options: FeedOptions = {}): Promise<Float32Array> {
    if (tokens.length === 0) throw new RangeError("feed needs at least one token");
    const { native, sequenceId } = this.engine;
    let batchIndex = -1;
    for (let start = 0; start < tokens.length; ) {
      if (start > 0) options.signal?.throwIfAborted();
      const remaining = tokens.length - start;
      const n = this.policy ? nextChunkLength(this.policy, this.attended, remaining) : remaining;
      if (this.policy) this.makeRoom(n);
      else if (this.attended + n > this.cells) {
        throw new RangeError(
          `the dense cache holds ${this.cells} tokens and has ${this.attended}; ${n} more do not fit: load it with a larger context_size (--context_size), or stream with attention sinks`,
        );
      }
      const last = start + n === tokens.length;
      for (let i = 0; i < n; i++) this.batchTokens[i] = tokens[start + i];
      LAST_TOKEN[0] = n - 1;
      native.initBatch(n);
      const indices = native.addToBatch(sequenceId, this.next, this.batchTokens.subarray(0, n), last ? LAST_TOKEN : NO_LOGITS);
      await native.decodeBatch();
      if (last) batchIndex = indices[0];
      this.advance(n);
      start += n;
    }
    return this.readLogits(batchIndex);
  }

  /** Log-probabilities (logits up to a constant, which every consumer is invariant to) of the last pass. */
  private async readLogits(batchIndex: number): Promise<Float32Array> {
    const [, probabilities] = await this.engine.native.sampleToken(batchIndex, this.engine.sampler, true);
    if (!probabilities) throw new Error("llama.cpp returned no distribution for the last token");
    const { logits } = this;
    logits.fill(-Infinity);
    for (let i = 0; i < probabilities.length; i += 2) logits[probabilities[i]] = Math.log(probabilities[i + 1]);
    return logits;
  }

  /** Counts `n` tokens just decoded at `next`: the first ones of a stream become its sinks. */
  private advance(n: number): void {
    const wantedSinks = this.policy?.sink_size ?? 0;
    if (this.sinks < wantedSinks) {
      // The window is still empty, so it starts right after the sinks.
      const added = Math.min(n, wantedSinks - this.sinks);
      this.sinks += added;
      this.windowStart += added;
    }
    this.next += n;
    this.seen += n;
  }

  /** Evicts the oldest window tokens so `n` more fit, and closes the gap they leave when it is due. */
  private makeRoom(n: number): void {
    const { native, sequenceId } = this.engine;
    const excess = this.attended + n - this.policy!.capacity;
    if (excess > 0) {
      const evicted = Math.min(Math.max(excess, this.evictionInterval), this.next - this.windowStart);
      native.removeTokenCellsFromSequence(sequenceId, this.windowStart, this.windowStart + evicted);
      this.windowStart += evicted;
    }
    const gap = this.windowStart - this.sinks;
    if (gap > 0 && (this.sinks > 0 || gap > this.policy!.capacity)) {
      native.shiftSequenceTokenCells(sequenceId, this.windowStart, this.next, -gap);
      this.windowStart -= gap;
      this.next -= gap;
    }
  }

  stats(): SinkCacheStats {
    return {
      seen_tokens: this.seen,
      cached_tokens: this.attended,
      kv_cache_bytes: this.attended * this.bytesPerToken,
      kv_buffer_bytes: this.cells * this.bytesPerToken,
    };
  }

  reset(): void {
    this.engine.native.disposeSequence(this.engine.sequenceId);
    this.sinks = this.windowStart = this.next = this.seen = 0;
  }

  /** Not available yet: a llama.cpp stream cannot be saved, so `serve` and saved chats need the onnxruntime backend. */
  snapshot(): Uint8Array {
    throw new Error(UNSAVABLE);
  }

  restore(): void {
    throw new Error(UNSAVABLE);
  }

  /** Frees the model and its context. */
  dispose(): Promise<void> {
    return this.engine.dispose();
  }
}

/**
 * Loads a model into llama.cpp as a stream of one experiment (default `attention_sinks`). A GGUF file of
 * version 2 or 3 loads as it is; any other checkpoint the package reads is first converted to GGUF v3 (once,
 * into the conversion cache).
 */
export async function loadLlamaCppBackend(nameOrPath: string, options: LlamaCppLoadOptions = {}): Promise<LlamaCppStream> {
  const llama = await sharedLlama();
  const path = await resolveGgufSource(nameOrPath, { tokenizer: options.tokenizer, onConvert: options.onConvert });
  const source = openFileSource(path);
  let description;
  try {
    description = describeGgufModel(source);
  } finally {
    source.close();
  }
  const { spec, files } = description;
  const config = JSON.parse(files.get("config.json")!) as { max_position_embeddings: number };
  const generation = JSON.parse(files.get("generation_config.json")!) as { eos_token_id?: number | number[] };
  const tokenizer = new TransformersTokenizer(new LlamaTokenizer(JSON.parse(files.get("tokenizer.json")!), JSON.parse(files.get("tokenizer_config.json")!)));

  const experiment = options.experiment ?? "attention_sinks";
  // Cells carry no masked slots, so a sink cache may use every position the model addresses.
  const budget = { max_positions: config.max_position_embeddings, lazy_eviction: false, masked_slots_use_positions: false };
  const defaultWindow = (sinks: number) =>
    experiment === "transformers" ? DEFAULT_ATTENTION_SINK_WINDOW_SIZE : resolveSinkPolicy({ attention_sink_size: sinks }, budget).window_size;
  const { sink_options, window_tokens } = experimentCache(experiment, options, defaultWindow);
  const policy = sink_options && resolveSinkPolicy(sink_options, budget);
  const evictionInterval = options.attention_sink_eviction_interval ?? 1;
  if (!Number.isInteger(evictionInterval) || evictionInterval < 1 || (policy && evictionInterval > policy.window_size)) {
    throw new AttentionSinkOptionError(
      `attention_sink_eviction_interval must be an integer from 1 to the window (${policy?.window_size ?? "its size"}), got ${evictionInterval}`,
    );
  }
  const cells = policy?.capacity ?? options.context_size ?? config.max_position_embeddings;

  const kvType = options.kv_cache_type ?? "f32";
  const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
  try {
    const context = await model.createContext({
      contextSize: cells,
      // Every chunk decodes in one batch, so its tokens are evaluated together as on onnxruntime.
      batchSize: cells,
      sequences: 1,
      flashAttention: false,
      threads: options.threads ?? availableParallelism(),
      experimentalKvCacheKeyType: kvType === "f32" ? "F32" : "F16",
      experimentalKvCacheValueType: kvType === "f32" ? "F32" : "F16",
    });
    const { native, sequence, sequenceId, sampler } = nativeParts(llama, model, context);
    const engine: Engine = {
      native,
      sequence,
      sequenceId,
      sampler,
      async dispose() {
        sampler.dispose();
        await sequence.dispose();
        await context.dispose();
        await model.dispose();
      },
    };
    const bytesPerToken = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * (kvType === "f32" ? 4 : 2);
    return new LlamaCppStream(engine, tokenizer, [generation.eos_token_id ?? []].flat(), policy, evictionInterval, window_tokens, context.contextSize, bytesPerToken, spec.vocab_size);
  } catch (error) {
    await model.dispose();
    throw error;
  }
}

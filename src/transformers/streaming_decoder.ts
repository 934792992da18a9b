/**
 * The transformers.js integration: a decoder's forward pass and generation hooks routed through the sink
 * cache. The ONNX contract is the transformers.js one: `input_ids`, `attention_mask`, `position_ids`
 * (when the graph takes them), `past_key_values.{i}.key/value` in, `logits` and `present.{i}.key/value` out.
 * The cache decides which slots are attended and at which positions; this module only builds feeds, runs
 * the session and hands the presents back.
 */
import { DynamicCache, Tensor, type PreTrainedModel } from "@huggingface/transformers";
import type { Tensor as OrtTensor } from "onnxruntime-common";
import { resolveSinkPolicy, type AttentionSinkOptions, type SinkPolicy } from "../cache/options.js";
import type { KvType } from "../cache/kv_data.js";
import { SinkCacheError, SinkCacheState, type CacheLayout, type CachePositions, type SinkCacheStats } from "../cache/sink_cache.js";
import { resolveGeometry, type ModelConfig, type ModelGeometry } from "../positions/families.js";

/** The part of an onnxruntime InferenceSession this module uses. */
interface DecoderSession {
  readonly inputNames: readonly string[];
  readonly inputMetadata?: readonly { readonly name: string; readonly type?: string }[];
  run(feeds: Record<string, OrtTensor>): Promise<Record<string, OrtTensor>>;
}

/** What a streaming model reports about its configuration. */
export interface AttentionSinkSettings extends SinkPolicy {
  model_type: string;
  positions: ModelGeometry["scheme"]["kind"];
}

/** Inputs of a streaming forward pass (transformers.js names). */
export interface StreamingForwardInputs {
  input_ids: Tensor;
  /** Must be all ones over the new tokens: padded rows are not supported. */
  attention_mask?: Tensor | null;
  /** The stream's cache; a new one is created when absent. Pass it back to continue the stream. */
  past_key_values?: DynamicCache | null;
  /** Logits to return: 0 (default) for every fed token, k for the last k. */
  num_logits_to_keep?: number | Tensor | null;
  /** Not accepted: the cache assigns positions. */
  position_ids?: Tensor | null;
}

export interface StreamingForwardOutput {
  logits: Tensor;
  past_key_values: DynamicCache;
}

/** The streaming state of each cache object, whichever model fills it. */
const streams = new WeakMap<object, { owner: StreamingDecoder; state: SinkCacheState }>();

/** Counters of a cache filled by a streaming model (null for a cache no streaming model has used). */
export function sinkCacheStats(cache: DynamicCache): SinkCacheStats | null {
  return streams.get(cache)?.state.stats ?? null;
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

function scalar(value: number | Tensor | null | undefined): number {
  if (value === null || value === undefined) return 0;
  return value instanceof Tensor ? Number(value.data[0]) : value;
}

/**
 * The sink policy a model gets from its config and the options: validated sizes and the compaction interval.
 * @param takesPositionIds whether the graph takes `position_ids` (RoPE slot positions are only exact then).
 */
export function resolveStreamingPolicy(config: ModelConfig, options: AttentionSinkOptions, takesPositionIds = true): AttentionSinkSettings {
  const { scheme, max_positions, model_type } = resolveGeometry(config);
  const rope = scheme.kind === "rope";
  // Masked slots are exact for RoPE with position_ids, ALiBi over attended slots and learned tables; other
  // graphs (derived RoPE positions, ALiBi over slot indices) compact on every eviction.
  const lazy = (rope && takesPositionIds) || (scheme.kind === "alibi" && scheme.positions === "mask_cumsum") || scheme.kind === "learned";
  const policy = resolveSinkPolicy(
    lazy ? options : { ...options, attention_sink_compaction_interval: 0 },
    max_positions,
    rope ? max_positions : null,
  );
  return { ...policy, model_type, positions: scheme.kind };
}

export class StreamingDecoder {
  readonly settings: AttentionSinkSettings;
  private readonly layout: CacheLayout;
  private readonly positions: CachePositions;
  private readonly takesPositionIds: boolean;
  private readonly takesLogitsToKeep: boolean;
  private readonly takesCacheBranch: boolean;

  constructor(
    private readonly session: DecoderSession,
    config: ModelConfig,
    options: AttentionSinkOptions,
  ) {
    const inputs = new Set(session.inputNames);
    this.takesPositionIds = inputs.has("position_ids");
    this.takesLogitsToKeep = inputs.has("num_logits_to_keep");
    this.takesCacheBranch = inputs.has("use_cache_branch");
    const policy = resolveStreamingPolicy(config, options, this.takesPositionIds);
    const rope = policy.positions === "rope";
    const geometry = resolveGeometry(config, policy.capacity + policy.compaction_interval);
    this.layout = { ...geometry, kv_type: kvType(session) };
    const scheme = geometry.scheme;
    this.positions = {
      rope: scheme.kind === "rope" ? { spec: scheme.rope, inverse_frequencies: scheme.inverse_frequencies } : null,
      position_ids: rope ? "slot" : "attended",
    };
    this.settings = policy;
  }

  /** The streaming state behind a cache object, created on first use. */
  stateOf(cache: DynamicCache): SinkCacheState {
    const stream = streams.get(cache);
    if (stream) {
      if (stream.owner !== this && !this.compatible(stream.owner)) {
        throw new SinkCacheError("this cache belongs to a stream of another model or other attention-sink settings");
      }
      return stream.state;
    }
    if (cache.get_seq_length() > 0) {
      throw new SinkCacheError(
        "past_key_values already holds tokens from a model without attention sinks: start the stream with an empty `new DynamicCache()`",
      );
    }
    const entries = cache as unknown as Record<string, Tensor>;
    const state = new SinkCacheState(this.settings, this.layout, this.positions, entries);
    streams.set(cache, { owner: this, state });
    return state;
  }

  private compatible(other: StreamingDecoder): boolean {
    return JSON.stringify(other.settings) === JSON.stringify(this.settings) && other.layout.num_layers === this.layout.num_layers && other.layout.kv_type === this.layout.kv_type;
  }

  async forward(inputs: StreamingForwardInputs): Promise<StreamingForwardOutput> {
    const { input_ids, attention_mask } = inputs;
    if (!(input_ids instanceof Tensor) || input_ids.dims.length !== 2) {
      throw new TypeError("input_ids must be an int64 Tensor of shape [batch, length] (inputs_embeds are not supported)");
    }
    if (inputs.position_ids) {
      throw new SinkCacheError("position_ids cannot be given to an attention-sink model: the cache assigns positions");
    }
    const [batch, length] = input_ids.dims;
    if (length === 0) throw new RangeError("input_ids is empty: give at least one token");
    if (attention_mask) rejectPadding(attention_mask, batch, length);
    const cache = inputs.past_key_values ?? new DynamicCache();
    const state = this.stateOf(cache);
    const ids = input_ids.data as BigInt64Array;
    const keep = Math.min(length, scalar(inputs.num_logits_to_keep) || length);

    let logits: Tensor | null = null;
    let gathered: Float32Array | null = null;
    let vocab = 0;
    for (let start = 0; start < length; ) {
      const n = state.nextChunkLength(length - start);
      const chunkLogits = await this.runChunk(state, ids, batch, length, start, n, Math.max(1, Math.min(n, start + n - (length - keep))));
      const returned = chunkLogits.dims[1];
      if (start === 0 && n === length && returned === keep) {
        logits = chunkLogits; // one pass that returned exactly what was asked: no copy
      } else {
        vocab = chunkLogits.dims[2];
        gathered ??= new Float32Array(batch * keep * vocab);
        copyKeptLogits(chunkLogits.data as Float32Array, gathered, batch, vocab, start + n - returned, returned, length - keep, keep);
      }
      start += n;
    }
    logits ??= new Tensor("float32", gathered!, [batch, keep, vocab]);
    return { logits, past_key_values: cache };
  }

  private async runChunk(
    state: SinkCacheState,
    ids: BigInt64Array,
    batch: number,
    length: number,
    start: number,
    n: number,
    logitsToKeep: number,
  ): Promise<Tensor> {
    state.beginForward(batch, n);
    const { attention_mask, position_ids } = state.maskAndPositions(n);
    const chunkIds = start === 0 && n === length ? ids : sliceColumns(ids, batch, length, start, n);
    const feeds: Record<string, Tensor> = {
      input_ids: new Tensor("int64", chunkIds, [batch, n]),
      attention_mask,
      ...state.pastFeeds(),
    };
    if (this.takesPositionIds) feeds.position_ids = position_ids;
    if (this.takesLogitsToKeep) feeds.num_logits_to_keep = new Tensor("int64", BigInt64Array.of(BigInt(logitsToKeep)), []);
    if (this.takesCacheBranch) feeds.use_cache_branch = new Tensor("bool", [state.seen_tokens > 0], [1]);
    const ortFeeds: Record<string, OrtTensor> = {};
    for (const name in feeds) ortFeeds[name] = feeds[name].ort_tensor as OrtTensor;
    const outputs = await this.session.run(ortFeeds);
    const keys: Tensor[] = [];
    const values: Tensor[] = [];
    for (let i = 0; i < this.layout.num_layers; i++) {
      const key = outputs[`present.${i}.key`];
      const value = outputs[`present.${i}.value`];
      if (!key || !value) throw new SinkCacheError(`the model returned no present.${i}.key/value: it does not follow the transformers.js decoder contract`);
      keys.push(new Tensor(key));
      values.push(new Tensor(value));
    }
    state.finishForward(keys, values, ids, length, start, n);
    return new Tensor(outputs.logits);
  }

  /**
   * Generation hook, first step of a turn: binds the cache and decides what to feed. A re-sent transcript
   * (as a chat template re-renders it) feeds only what the stream has not seen; otherwise the input is new
   * text, preceded by the last token the previous turn sampled but never fed.
   */
  prepareInputsForGeneration(modelInputs: Record<string, unknown>): Record<string, unknown> {
    const cache = (modelInputs.past_key_values as DynamicCache | null | undefined) ?? new DynamicCache();
    modelInputs.past_key_values = cache;
    const state = this.stateOf(cache);
    const inputIds = modelInputs.input_ids as Tensor;
    const [batch, length] = inputIds.dims;
    const data = inputIds.data as BigInt64Array;
    const mask = modelInputs.attention_mask as Tensor | null | undefined;
    if (mask) rejectPadding(mask, batch, length);
    const streamed = state.streamedPrefix(data, length);
    const pending = state.takePending();
    if (streamed > 0) {
      modelInputs.input_ids = new Tensor("int64", sliceColumns(data, batch, length, streamed, length - streamed), [batch, length - streamed]);
    } else if (pending) {
      const joined = new BigInt64Array(batch * (length + 1));
      for (let b = 0; b < batch; b++) {
        joined[b * (length + 1)] = pending[b];
        joined.set(data.subarray(b * length, (b + 1) * length), b * (length + 1) + 1);
      }
      modelInputs.input_ids = new Tensor("int64", joined, [batch, length + 1]);
    }
    modelInputs.attention_mask = null;
    modelInputs.num_logits_to_keep = 1; // generation samples from the last position only
    return modelInputs;
  }

  /** After generate(): remembers the final sampled tokens, so the next turn on this cache feeds them first. */
  finishGeneration(cache: DynamicCache | null | undefined, sequences: Tensor): void {
    const stream = cache ? streams.get(cache) : undefined;
    if (!stream) return;
    const [batch, length] = sequences.dims;
    const data = sequences.data as BigInt64Array;
    stream.state.setPending(BigInt64Array.from({ length: batch }, (_, b) => data[b * length + length - 1]));
  }

  /** Generation hook: the next pass feeds only the sampled tokens; the cache object carries the rest. */
  updateInputsAfterStep(modelInputs: Record<string, unknown>, generated: bigint[][]): Record<string, unknown> {
    const batch = generated.length;
    modelInputs.input_ids = new Tensor("int64", BigInt64Array.from(generated.flat()), [batch, 1]);
    modelInputs.attention_mask = new Tensor("int64", new BigInt64Array(batch).fill(1n), [batch, 1]);
    modelInputs.position_ids = null;
    return modelInputs;
  }
}

/** The element type of the session's KV cache inputs (float32 when the session does not say). */
function kvType(session: DecoderSession): KvType {
  const type = session.inputMetadata?.find((input) => input.name === "past_key_values.0.key")?.type ?? "float32";
  if (type !== "float32" && type !== "float16") {
    throw new SinkCacheError(`attention-sinks streams float32 and float16 KV caches; this model's cache is ${type}`);
  }
  return type;
}

function sliceColumns(ids: BigInt64Array, batch: number, length: number, start: number, n: number): BigInt64Array {
  const out = new BigInt64Array(batch * n);
  for (let b = 0; b < batch; b++) out.set(ids.subarray(b * length + start, b * length + start + n), b * n);
  return out;
}

/** Copies the logits of tokens [first, first + count) that fall in the kept range [keptStart, keptStart + keep). */
function copyKeptLogits(
  source: Float32Array,
  target: Float32Array,
  batch: number,
  vocab: number,
  first: number,
  count: number,
  keptStart: number,
  keep: number,
): void {
  const from = Math.max(first, keptStart);
  const to = Math.min(first + count, keptStart + keep);
  for (let b = 0; b < batch; b++) {
    for (let t = from; t < to; t++) {
      const s = (b * count + (t - first)) * vocab;
      target.set(source.subarray(s, s + vocab), (b * keep + (t - keptStart)) * vocab);
    }
  }
}

function rejectPadding(mask: Tensor, batch: number, length: number): void {
  const [rows, columns] = mask.dims;
  if (rows !== batch || columns < length) {
    throw new RangeError(`attention_mask has shape [${mask.dims}] but input_ids has [${batch}, ${length}]`);
  }
  const data = mask.data as BigInt64Array;
  for (let b = 0; b < batch; b++) {
    for (let t = columns - length; t < columns; t++) {
      if (data[b * columns + t] !== 1n) {
        throw new SinkCacheError(
          "padded batches are not supported by attention-sinks: give rows of equal length (attention_mask all ones), or run the rows one at a time",
        );
      }
    }
  }
}

/** The model surface this package adds or changes. */
export interface AttentionSinkModel {
  readonly attention_sinks: AttentionSinkSettings;
  forward(inputs: StreamingForwardInputs): Promise<StreamingForwardOutput>;
}

/**
 * Turns a loaded transformers.js decoder into a streaming one, in place (like the Python package, which
 * swaps the forward of each model family): `forward`, `generate` and calling the model all stream.
 */
export function enableAttentionSinks<M extends PreTrainedModel>(model: M, options: AttentionSinkOptions = {}): M & AttentionSinkModel {
  const session = (model.sessions as Record<string, DecoderSession | undefined>).model;
  if (!session) {
    throw new SinkCacheError(
      `attention-sinks needs a decoder-only model with one "model" session; ${model.constructor.name} has sessions: ${Object.keys(model.sessions).join(", ")}`,
    );
  }
  const decoder = new StreamingDecoder(session, model.config as unknown as ModelConfig, options);
  const target = model as unknown as Record<string, unknown>;
  Object.defineProperty(target, "attention_sinks", { value: decoder.settings, enumerable: false });
  target.forward = (inputs: StreamingForwardInputs) => decoder.forward(inputs);
  target.prepare_inputs_for_generation = (_ids: bigint[][], modelInputs: Record<string, unknown>) =>
    decoder.prepareInputsForGeneration(modelInputs);
  const generate = model.generate.bind(model);
  target.generate = async (params: Parameters<M["generate"]>[0]) => {
    const result = await generate(params);
    const sequences = result instanceof Tensor ? result : (result as { sequences: Tensor }).sequences;
    decoder.finishGeneration((params as { past_key_values?: DynamicCache | null }).past_key_values, sequences);
    return result;
  };
  target._update_model_kwargs_for_generation = ({ generated_input_ids, model_inputs }: { generated_input_ids: bigint[][]; model_inputs: Record<string, unknown> }) =>
    decoder.updateInputsAfterStep(model_inputs, generated_input_ids);
  return model as M & AttentionSinkModel;
}

/**
 * The forward engine of a streaming transformers.js decoder: feeds a prompt in chunks the cache can take,
 * builds each chunk's feeds from the cache's slots, runs the session, hands the presents back to the cache
 * and gathers the logits asked for. The cache decides which slots are attended and at which positions.
 */
import { DynamicCache, Tensor } from "@huggingface/transformers";
import type { Tensor as OrtTensor } from "onnxruntime-common";
import type { AttentionSinkOptions } from "../cache/options.js";
import { StateRecordError, type StateSections } from "../backend/state_sections.js";
import { SinkCacheError, SinkCacheState, type CacheLayout, type SinkCacheSnapshot } from "../cache/sink_cache.js";
import { resolveStreamingPolicy, type AttentionSinkSettings } from "../cache/streaming_policy.js";
import type { ModelConfig } from "../positions/families.js";
import type { SlotRule } from "../positions/slot_rule.js";
import { checkCacheGeometry, decoderInputs, kvType, pastName, returnsNewKvOnly, type DecoderInputs, type DecoderSession } from "./decoder_contract.js";
import { receivePresents } from "./presents.js";
import { webGpuKv } from "./webgpu_kv.js";
import { registerStream, streamOf, type Stream } from "./stream_registry.js";
import { Transcript } from "./transcript.js";

const COUNTER_NAMES = ["batch", "attended", "evicted", "seen", "sinks_kept"] as const satisfies readonly (keyof SinkCacheSnapshot["counters"])[];

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
  /** Stops a long input between chunks (the stream keeps what was fed); the call rejects with its reason. */
  signal?: AbortSignal | null;
}

export interface StreamingForwardOutput {
  logits: Tensor;
  past_key_values: DynamicCache;
}

export class StreamingDecoder {
  readonly settings: AttentionSinkSettings;
  private readonly layout: CacheLayout;
  private readonly rule: SlotRule;
  private readonly inputs: DecoderInputs;
  private readonly signature: string;
  private readonly keyNames: string[];
  private readonly valueNames: string[];

  constructor(
    private readonly session: DecoderSession,
    config: ModelConfig,
    options: AttentionSinkOptions,
  ) {
    this.inputs = decoderInputs(session);
    const { settings, geometry, rule } = resolveStreamingPolicy(config, options, this.inputs);
    checkCacheGeometry(geometry, session);
    this.settings = settings;
    this.rule = rule;
    this.layout = {
      num_layers: geometry.num_layers,
      num_kv_heads: geometry.num_kv_heads,
      head_dim: geometry.head_dim,
      kv_type: kvType(session),
      new_kv_only: returnsNewKvOnly(session),
    };
    this.signature = JSON.stringify([settings, this.layout.num_layers, this.layout.kv_type]);
    this.keyNames = Array.from({ length: this.layout.num_layers }, (_, i) => pastName(i, "key"));
    this.valueNames = Array.from({ length: this.layout.num_layers }, (_, i) => pastName(i, "value"));
  }

  /** The stream behind a cache object, started on first use. */
  stream(cache: DynamicCache): Stream {
    const stream = streamOf(cache);
    if (stream) {
      if (stream.signature !== this.signature) {
        throw new SinkCacheError("this cache belongs to a stream of another model or other attention-sink settings");
      }
      return stream;
    }
    if (cache.get_seq_length() > 0) {
      throw new SinkCacheError(
        "past_key_values already holds tokens from a model without attention sinks: start the stream with an empty `new DynamicCache()`",
      );
    }
    return this.start(cache, new Transcript());
  }

  private start(cache: DynamicCache, transcript: Transcript): Stream {
    const entries = cache as unknown as Record<string, Tensor>;
    const started: Stream = {
      signature: this.signature,
      slots: new SinkCacheState(this.settings, this.layout, this.rule, entries, { keys: this.keyNames, values: this.valueNames }, webGpuKv(this.session, this.rule)),
      transcript,
    };
    registerStream(cache, started);
    return started;
  }

  /** The whole state of a cache's stream, of constant size once the cache is full. */
  save(cache: DynamicCache): StateSections {
    const stream = this.stream(cache);
    const { counters, keys, values, sink_keys } = stream.slots.save();
    const { lanes, fed, pending } = stream.transcript.save();
    // Counters go in a fixed-width section, not the JSON header, so the record's size does not grow with them.
    const numbers = Float64Array.from([...COUNTER_NAMES.map((name) => counters[name]), fed]);
    const header = { signature: this.signature, lanes: lanes !== null, pending: pending !== null };
    return { header, arrays: [numbers, ...keys, ...values, ...sink_keys, ...(lanes ? [lanes] : []), ...(pending ? [pending] : [])] };
  }

  /** A new cache that continues the stream a {@link save} of this decoder took. */
  load(sections: StateSections): DynamicCache {
    const { header } = sections;
    const arrays = [...sections.arrays];
    if (header.signature !== this.signature) {
      throw new StateRecordError("the saved stream belongs to another model or other attention-sink settings");
    }
    const numbers = arrays.shift();
    if (!(numbers instanceof Float64Array) || numbers.length !== COUNTER_NAMES.length + 1) throw new StateRecordError("the saved stream has no counters");
    const counters = Object.fromEntries(COUNTER_NAMES.map((name, i) => [name, numbers[i]])) as SinkCacheSnapshot["counters"];
    const fed = numbers[COUNTER_NAMES.length];
    const layers = counters.batch === 0 ? 0 : this.layout.num_layers;
    const sinkLayers = this.rule.rotation ? layers : 0;
    const take = <T>(n: number) => arrays.splice(0, n) as T[];
    const snapshot: SinkCacheSnapshot = { counters, keys: take(layers), values: take(layers), sink_keys: take(sinkLayers) };
    const lanes = header.lanes === true ? (take<Uint32Array>(1)[0] ?? null) : null;
    const pending = header.pending === true ? (take<BigInt64Array>(1)[0] ?? null) : null;
    const malformed =
      arrays.length > 0 ||
      !Number.isInteger(fed) ||
      fed < 0 ||
      (header.lanes === true && !(lanes instanceof Uint32Array && lanes.length === 2 * counters.batch)) ||
      (header.pending === true && !(pending instanceof BigInt64Array && pending.length === counters.batch));
    if (malformed) throw new StateRecordError("the saved stream's sections do not match its header");
    const cache = new DynamicCache();
    const stream = this.start(cache, Transcript.load({ lanes, fed, pending }));
    try {
      stream.slots.load(snapshot);
    } catch (error) {
      if (error instanceof SinkCacheError) throw new StateRecordError(error.message);
      throw error;
    }
    return cache;
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
    const stream = this.stream(cache);
    const ids = input_ids.data as BigInt64Array;
    const keep = Math.min(length, scalar(inputs.num_logits_to_keep) || length);

    let logits: Tensor | null = null;
    // Gathered in the graph's own logits type (float16 exports return float16).
    let gathered: { type: Tensor["type"]; data: LogitsArray } | null = null;
    let vocab = 0;
    for (let start = 0; start < length; ) {
      if (start > 0) inputs.signal?.throwIfAborted();
      const n = stream.slots.nextChunkLength(length - start);
      const chunkLogits = await this.runChunk(stream.slots, ids, batch, length, start, n, Math.max(1, Math.min(n, start + n - (length - keep))));
      stream.transcript.record(ids, batch, length, start, n);
      const returned = chunkLogits.dims[1];
      if (start === 0 && n === length && returned === keep) {
        logits = chunkLogits; // one pass that returned exactly what was asked: no copy
      } else {
        vocab = chunkLogits.dims[2];
        const source = chunkLogits.data as LogitsArray;
        gathered ??= { type: chunkLogits.type, data: new (source.constructor as new (length: number) => LogitsArray)(batch * keep * vocab) };
        copyKeptLogits(source, gathered.data, batch, vocab, start + n - returned, returned, length - keep, keep);
      }
      start += n;
    }
    logits ??= new Tensor(gathered!.type, gathered!.data, [batch, keep, vocab]);
    return { logits, past_key_values: cache };
  }

  private async runChunk(
    slots: SinkCacheState,
    ids: BigInt64Array,
    batch: number,
    length: number,
    start: number,
    n: number,
    logitsToKeep: number,
  ): Promise<Tensor> {
    await slots.beginForward(batch, n);
    const { attention_mask, position_ids } = slots.maskAndPositions(n);
    const chunkIds = start === 0 && n === length ? ids : sliceColumns(ids, batch, length, start, n);
    const feeds: Record<string, Tensor> = {
      input_ids: new Tensor("int64", chunkIds, [batch, n]),
      attention_mask,
      ...slots.pastFeeds(),
    };
    if (this.inputs.takes_position_ids) feeds.position_ids = position_ids;
    if (this.inputs.takes_logits_to_keep) feeds.num_logits_to_keep = new Tensor("int64", BigInt64Array.of(BigInt(logitsToKeep)), []);
    if (this.inputs.takes_cache_branch) feeds.use_cache_branch = new Tensor("bool", [slots.seen_tokens > 0], [1]);
    const ortFeeds: Record<string, OrtTensor> = {};
    for (const name in feeds) ortFeeds[name] = feeds[name].ort_tensor as OrtTensor;
    const outputs = await this.session.run(ortFeeds);
    const { keys, values } = await receivePresents(outputs, this.layout.num_layers, this.layout.new_kv_only);
    await slots.finishForward(keys, values, n);
    return new Tensor(outputs.logits);
  }
}

function scalar(value: number | Tensor | null | undefined): number {
  if (value === null || value === undefined) return 0;
  return value instanceof Tensor ? Number(value.data[0]) : value;
}

export function sliceColumns(ids: BigInt64Array, batch: number, length: number, start: number, n: number): BigInt64Array {
  const out = new BigInt64Array(batch * n);
  for (let b = 0; b < batch; b++) out.set(ids.subarray(b * length + start, b * length + start + n), b * n);
  return out;
}

/** Copies the logits of tokens [first, first + count) that fall in the kept range [keptStart, keptStart + keep). */
/** Logits as onnxruntime returns them: float32, or float16 as raw bits. */
type LogitsArray = Float32Array | Uint16Array;

function copyKeptLogits(
  source: LogitsArray,
  target: LogitsArray,
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

export function rejectPadding(mask: Tensor, batch: number, length: number): void {
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

/**
 * The attention-sink KV cache: which slots of the key/value buffers attention sees, and where.
 *
 * Buffers follow the transformers.js layout [batch, kv_heads, slots, head_dim]. They either grow by the tokens
 * of each forward pass (the graph concatenates past and new), or, for graphs that return only the new tokens'
 * keys and values (src/onnx/new_kv_only.ts), have room for every slot the cache can hold, and each pass
 * writes its tokens into them in place (on the GPU, when the session returns presents there: device_kv.ts).
 * Slots are laid out as
 *
 *     [ sinks | evicted (masked out) | window ]
 *
 * Evicting a token only masks its slot; every `compaction_interval` evictions the evicted slots are copied
 * away. With RoPE, positions are the slot indices: the window keeps the rotation it was written with, and
 * only the sink keys are re-rotated (from a pristine copy) to sit just before the window, so every query sees
 * sinks and window at contiguous positions exactly as if the cache were compacted. Compaction rotates the
 * window back by the evicted count, which keeps positions below sink + window + compaction_interval.
 */
import { Tensor } from "@huggingface/transformers";
import type { Tensor as OrtTensor } from "onnxruntime-common";
import { KeyRotation } from "../positions/rope.js";
import type { SlotRule } from "../positions/slot_rule.js";
import { allocateKv, copyKv, readAsFloat32, rotateRows, writeFromFloat32, type KvArray, type KvType } from "./kv_data.js";
import { NEW_TOKEN_MASK_VALUE } from "../onnx/new_kv_only.js";
import type { DeviceKv, DeviceKvShape } from "./device_kv.js";
import type { SinkPolicy } from "./options.js";

const NEW_TOKEN_MASK = BigInt(NEW_TOKEN_MASK_VALUE);

export interface CacheLayout {
  num_layers: number;
  num_kv_heads: number;
  head_dim: number;
  /** The element type of the model's KV cache. */
  kv_type: KvType;
  /** Whether the graph returns only the new tokens' keys and values, to be written in place. */
  new_kv_only: boolean;
}

export interface SinkCacheStats {
  /** Tokens streamed through the cache so far. */
  seen_tokens: number;
  /** Tokens attention sees now (at most sink + window). */
  cached_tokens: number;
  /** Bytes of keys and values of the cached tokens: exactly constant once the cache is full. */
  kv_cache_bytes: number;
  /** Bytes of the key/value buffers, including evicted slots not yet compacted away. */
  kv_buffer_bytes: number;
}

export class SinkCacheError extends Error {
  override name = "SinkCacheError";
}

/**
 * A stream's cache as saved: the attended slots only (sinks, then window), so its size is constant once the
 * cache is full, and the counters that place them. Masked slots are not saved: attention gives them no weight,
 * so they come back as zeros between the sinks and the window, at the slots (hence positions) they had.
 */
export interface SinkCacheSnapshot {
  counters: { batch: number; attended: number; evicted: number; seen: number; sinks_kept: number };
  /** Per layer, [batch, kv_heads, attended, head_dim]. */
  keys: KvArray[];
  values: KvArray[];
  /** Per layer, the sink keys as first written (with RoPE; empty otherwise). */
  sink_keys: Float32Array[];
}

/**
 * How many of `remaining` tokens the next forward pass of a sink cache holding `attended` tokens may take:
 * the rule every backend chunks long inputs by, so their streams attend to the same tokens.
 */
export function nextChunkLength(policy: Pick<SinkPolicy, "capacity" | "window_size">, attended: number, remaining: number): number {
  const free = policy.capacity - attended;
  if (free > 0) return Math.min(remaining, free);
  // Once full, each chunk evicts as many tokens as it brings: half a window keeps most context for all.
  return Math.min(remaining, Math.max(1, Math.ceil(policy.window_size / 2)));
}

/** The bookkeeping of one stream. Tensors live in the cache object's standard entries. */
export class SinkCacheState {
  private batch = 0;
  /** Slots in use in the buffers. */
  private slots = 0;
  /** Buffers written in place: their fixed length in slots (sink + window + compaction interval); else 0. */
  private readonly fixedSlots: number;
  /**
   * The past fed to a fixed-buffer graph before its first pass: one masked slot of zeros (a zero-length past
   * would give zero-sized score tensors, which onnxruntime-web's WebGPU kernels cannot bind).
   */
  private placeholderPast?: Tensor;
  /** Fixed buffers kept on the GPU, once a pass returned its presents there. */
  private device: DeviceKv | null = null;
  /** Masked slots between the sinks and the window. */
  private evicted = 0;
  private seen = 0;
  /** Keys of the sink tokens as first written (rotated at their own position), per layer, in float32. */
  private readonly sinkKeys: Float32Array[] = [];
  /** Room to rotate the sinks of one row through float32 when the cache holds float16. */
  private sinkScratch = new Float32Array(0);
  private sinksKept = 0;
  /** The rotation the sink keys in the buffers currently carry. */
  private sinkShift = 0;
  private readonly rotations = new Map<number, KeyRotation>();
  /** The entries of `entries` that hold each layer's keys and values. */
  private readonly keyNames: readonly string[];
  private readonly valueNames: readonly string[];

  constructor(
    readonly policy: SinkPolicy,
    readonly layout: CacheLayout,
    readonly rule: SlotRule,
    private readonly entries: Record<string, Tensor>,
    names: { keys: readonly string[]; values: readonly string[] },
    /** Makes device buffers for fixed-buffer streams whose presents come back on the GPU (absent: refused). */
    private readonly deviceKv?: (shape: DeviceKvShape, present: OrtTensor) => Promise<DeviceKv>,
  ) {
    this.keyNames = names.keys;
    this.valueNames = names.values;
    this.fixedSlots = layout.new_kv_only ? policy.capacity + policy.compaction_interval : 0;
  }

  /** Slots from one buffer row (one batch row, one KV head) to the next. */
  private get stride(): number {
    return this.fixedSlots || this.slots;
  }

  /** The past length the graph sees: the whole fixed buffer once written (one placeholder before), else the slots in use. */
  private get pastLength(): number {
    if (!this.fixedSlots) return this.slots;
    return this.slots > 0 ? this.fixedSlots : 1;
  }

  get stats(): SinkCacheStats {
    const bytesPerValue = this.layout.kv_type === "float32" ? 4 : 2;
    const bytesPerSlot = this.batch * this.layout.num_kv_heads * this.layout.head_dim * bytesPerValue * 2 * this.layout.num_layers;
    return {
      seen_tokens: this.seen,
      cached_tokens: this.attended,
      kv_cache_bytes: this.attended * bytesPerSlot,
      kv_buffer_bytes: (this.batch === 0 ? 0 : this.stride) * bytesPerSlot,
    };
  }

  /** Tokens attention sees. */
  get attended(): number {
    return this.slots - this.evicted;
  }

  get seen_tokens(): number {
    return this.seen;
  }

  /** How many of `remaining` tokens the next forward pass may take. */
  nextChunkLength(remaining: number): number {
    return nextChunkLength(this.policy, this.attended, remaining);
  }

  /** Makes room for `n` new tokens: evicts the oldest window tokens, compacts when due and moves the sinks. */
  async beginForward(batch: number, n: number): Promise<void> {
    if (this.batch === 0) this.bind(batch);
    if (batch !== this.batch) {
      throw new SinkCacheError(`this cache streams ${this.batch} row(s); got a batch of ${batch}`);
    }
    const { capacity, sink_size, compaction_interval } = this.policy;
    const excess = this.attended + n - capacity;
    if (excess > 0) {
      if (excess > this.attended - this.sinksKept) {
        throw new SinkCacheError(`a forward pass of ${n} tokens cannot fit a cache of ${capacity}: feed it in chunks`);
      }
      this.evicted += excess;
    }
    // At most compaction_interval masked slots, so slot positions stay below capacity + compaction_interval.
    if (this.evicted > compaction_interval) await this.compact();
    if (this.rule.rotation && sink_size > 0 && this.sinkShift !== this.evicted) await this.shiftSinks(this.evicted);
  }

  /**
   * The feeds that describe the slots: attention mask [batch, past + n] and position ids [batch, n]. Fixed
   * buffers mask their unused slots and mark the new tokens as asking for new-only presents.
   */
  maskAndPositions(n: number): { attention_mask: Tensor; position_ids: Tensor } {
    const past = this.pastLength;
    const total = past + n;
    const mask = new BigInt64Array(this.batch * total).fill(1n);
    const positions = new BigInt64Array(this.batch * n);
    const first = this.rule.position_ids === "slot" ? this.slots : this.attended;
    for (let b = 0; b < this.batch; b++) {
      const row = b * total;
      mask.fill(0n, row + this.sinksKept, row + this.sinksKept + this.evicted);
      if (this.fixedSlots) {
        mask.fill(0n, row + this.slots, row + past);
        mask.fill(NEW_TOKEN_MASK, row + past, row + total);
      }
      for (let k = 0; k < n; k++) positions[b * n + k] = BigInt(first + k);
    }
    return {
      attention_mask: new Tensor("int64", mask, [this.batch, total]),
      position_ids: new Tensor("int64", positions, [this.batch, n]),
    };
  }

  /**
   * Takes what a forward pass returned: buffers already holding past + new (adopted), or, with fixed buffers,
   * the new tokens' keys and values alone (written into their slots).
   */
  async finishForward(presentKeys: Tensor[], presentValues: Tensor[], n: number): Promise<void> {
    const { kv_type, num_kv_heads, head_dim } = this.layout;
    const returned = this.fixedSlots ? n : this.slots + n;
    const onGpu = presentKeys[0].location === "gpu-buffer";
    if (onGpu && !this.device) await this.moveToDevice(presentKeys[0].ort_tensor as OrtTensor);
    for (let i = 0; i < this.layout.num_layers; i++) {
      for (const present of [presentKeys[i], presentValues[i]]) {
        if (present.location !== (onGpu ? "gpu-buffer" : "cpu")) {
          throw new SinkCacheError(`this session returned its KV cache as "${present.location}" where the stream's buffers are on the ${onGpu ? "GPU" : "CPU"}`);
        }
        if (present.type !== kv_type || (!onGpu && !(present.data instanceof (kv_type === "float32" ? Float32Array : Uint16Array)))) {
          throw new SinkCacheError(`the model returned a ${present.type} KV cache where its inputs declare ${kv_type}`);
        }
        const [batch, heads, length, dim] = present.dims;
        if (batch !== this.batch || heads !== num_kv_heads || length !== returned || dim !== head_dim) {
          throw new SinkCacheError(`the model returned a KV cache of shape [${present.dims}] where [${this.batch}, ${num_kv_heads}, ${returned}, ${head_dim}] was expected`);
        }
      }
    }
    if (this.device) {
      this.device.writeNew(presentKeys.map((t) => t.ort_tensor as OrtTensor), presentValues.map((t) => t.ort_tensor as OrtTensor), this.slots, n);
    } else {
      if (this.fixedSlots && this.slots === 0) this.allocateFixed();
      for (let i = 0; i < this.layout.num_layers; i++) {
        if (this.fixedSlots) {
          this.writeNew(this.entries[this.keyNames[i]].data as KvArray, presentKeys[i].data as KvArray, n);
          this.writeNew(this.entries[this.valueNames[i]].data as KvArray, presentValues[i].data as KvArray, n);
        } else {
          this.entries[this.keyNames[i]] = presentKeys[i];
          this.entries[this.valueNames[i]] = presentValues[i];
        }
      }
    }
    this.slots += n;
    this.seen += n;
    if (this.sinksKept < this.policy.sink_size) this.keepSinkKeys();
  }

  /** Keeps the fixed buffers on the GPU the first pass returned its presents on. */
  private async moveToDevice(present: OrtTensor): Promise<void> {
    if (!this.fixedSlots || !this.deviceKv) {
      throw new SinkCacheError(
        `this session returns its KV cache as "${present.location}", and only graphs that return the new keys and values alone (the package's own exports: attention-sinks convert) keep a stream's cache there; ` +
          "convert the model with attention-sinks, or keep session outputs on the CPU",
      );
    }
    if (this.slots > 0) throw new SinkCacheError("a stream restored on the CPU cannot continue on the GPU: restore it into a model on the CPU");
    const { num_layers, num_kv_heads, head_dim, kv_type } = this.layout;
    this.device = await this.deviceKv({ num_layers, batch: this.batch, num_kv_heads, head_dim, slots: this.fixedSlots, sink_size: this.policy.sink_size, kv_type }, present);
    const { keys, values } = this.device.pastTensors();
    this.keyNames.forEach((name, i) => (this.entries[name] = keys[i]));
    this.valueNames.forEach((name, i) => (this.entries[name] = values[i]));
  }

  /** Copies n new tokens' rows [batch, kv_heads, n, head_dim] into their slots of a fixed buffer. */
  private writeNew(buffer: KvArray, fresh: KvArray, n: number): void {
    const { head_dim } = this.layout;
    const rows = this.batch * this.layout.num_kv_heads;
    for (let r = 0; r < rows; r++) copyKv(fresh, r * n * head_dim, n * head_dim, buffer, (r * this.fixedSlots + this.slots) * head_dim);
  }

  private bind(batch: number): void {
    this.batch = batch;
    // Fixed buffers are made by the first pass, on the CPU or on the GPU where it returns its presents.
    for (const name of [...this.keyNames, ...this.valueNames]) this.entries[name] = this.kvTensor(0);
    if (this.fixedSlots) this.placeholderPast = this.kvTensor(1);
    const { num_kv_heads, head_dim } = this.layout;
    if (this.rule.rotation) {
      for (let i = 0; i < this.layout.num_layers; i++) this.sinkKeys.push(new Float32Array(batch * num_kv_heads * this.policy.sink_size * head_dim));
    }
    this.sinkScratch = new Float32Array(this.policy.sink_size * head_dim);
  }

  private kvTensor(slots: number): Tensor {
    const { num_kv_heads, head_dim, kv_type } = this.layout;
    return new Tensor(kv_type, allocateKv(kv_type, this.batch * num_kv_heads * slots * head_dim), [this.batch, num_kv_heads, slots, head_dim]);
  }

  private allocateFixed(): void {
    for (const name of [...this.keyNames, ...this.valueNames]) this.entries[name] = this.kvTensor(this.fixedSlots);
  }

  /** Copies newly written sink keys while they still carry their own position's rotation. */
  private keepSinkKeys(): void {
    const kept = Math.min(this.policy.sink_size, this.slots);
    if (this.rule.rotation && this.device) {
      this.device.keepSinks(this.sinksKept, kept - this.sinksKept);
    } else if (this.rule.rotation) {
      const { head_dim } = this.layout;
      const rows = this.batch * this.layout.num_kv_heads;
      for (let i = 0; i < this.layout.num_layers; i++) {
        const keys = this.entries[this.keyNames[i]].data as KvArray;
        for (let r = 0; r < rows; r++) {
          const from = (r * this.stride + this.sinksKept) * head_dim;
          const to = (r * this.policy.sink_size + this.sinksKept) * head_dim;
          readAsFloat32(keys, from, (kept - this.sinksKept) * head_dim, this.sinkKeys[i], to);
        }
      }
    }
    this.sinksKept = kept;
  }

  private rotation(distance: number): KeyRotation {
    let rotation = this.rotations.get(distance);
    if (!rotation) {
      const rope = this.rule.rotation!;
      rotation = new KeyRotation(rope.spec, rope.inverse_frequencies, distance);
      // Distances repeat (1..compaction_interval and their negatives), so a small memo covers the stream.
      if (this.rotations.size < 4 * (this.policy.compaction_interval + 2)) this.rotations.set(distance, rotation);
    }
    return rotation;
  }

  /** Rewrites the sink keys in place, rotated by `distance` from their original positions. */
  private async shiftSinks(distance: number): Promise<void> {
    const { head_dim, num_kv_heads } = this.layout;
    const sinks = this.sinksKept;
    if (this.device) {
      await this.device.placeSinks(sinks, distance);
      this.sinkShift = distance;
      return;
    }
    const rotation = this.rotation(distance);
    const rows = this.batch * num_kv_heads;
    for (let i = 0; i < this.layout.num_layers; i++) {
      const keys = this.entries[this.keyNames[i]].data as KvArray;
      for (let r = 0; r < rows; r++) {
        rotateRows(rotation, this.sinkKeys[i], r * this.policy.sink_size * head_dim, keys, r * this.stride * head_dim, sinks, this.sinkScratch);
      }
    }
    this.sinkShift = distance;
  }

  /**
   * Copies the attended slots together: sinks back at their own positions, window shifted down. Growing
   * buffers are copied into fresh ones of the attended length; fixed buffers move their rows down in place.
   */
  private async compact(): Promise<void> {
    const { head_dim, num_kv_heads, kv_type } = this.layout;
    const sinks = this.sinksKept;
    const kept = this.attended;
    const windowLength = kept - sinks;
    const windowStart = sinks + this.evicted;
    const rows = this.batch * num_kv_heads;
    if (this.device) {
      await this.device.compact(sinks, windowStart, windowLength, this.rule.rotation && this.rule.position_ids === "slot" ? -this.evicted : null);
      this.slots = kept;
      this.evicted = 0;
      this.sinkShift = 0;
      return;
    }
    // Slot positions shift down with the window, so its keys rotate back by the evicted count.
    const rotation = this.rule.rotation && this.rule.position_ids === "slot" ? this.rotation(-this.evicted) : null;
    const scratch = rotation && kv_type !== "float32" ? new Float32Array(windowLength * head_dim) : this.sinkScratch;
    const inPlace = this.fixedSlots > 0;
    const targetStride = inPlace ? this.fixedSlots : kept;
    for (let i = 0; i < this.layout.num_layers; i++) {
      const oldKeys = this.entries[this.keyNames[i]].data as KvArray;
      const oldValues = this.entries[this.valueNames[i]].data as KvArray;
      // In place, each row's window moves to lower addresses of the same row, which rotateRows and copyKv
      // do safely (every slot is read before the slot it moves to is written).
      const keys = inPlace ? oldKeys : allocateKv(kv_type, rows * kept * head_dim);
      const values = inPlace ? oldValues : allocateKv(kv_type, rows * kept * head_dim);
      for (let r = 0; r < rows; r++) {
        const from = r * this.stride * head_dim;
        const to = r * targetStride * head_dim;
        const windowFrom = from + windowStart * head_dim;
        const windowTo = to + sinks * head_dim;
        copyKv(oldValues, from, sinks * head_dim, values, to);
        copyKv(oldValues, windowFrom, windowLength * head_dim, values, windowTo);
        if (this.rule.rotation) {
          writeFromFloat32(this.sinkKeys[i], r * this.policy.sink_size * head_dim, sinks * head_dim, keys, to);
        } else {
          copyKv(oldKeys, from, sinks * head_dim, keys, to);
        }
        if (rotation) rotateRows(rotation, oldKeys, windowFrom, keys, windowTo, windowLength, scratch);
        else copyKv(oldKeys, windowFrom, windowLength * head_dim, keys, windowTo);
      }
      if (!inPlace) {
        const dims = [this.batch, num_kv_heads, kept, head_dim];
        this.entries[this.keyNames[i]] = new Tensor(kv_type, keys, dims);
        this.entries[this.valueNames[i]] = new Tensor(kv_type, values, dims);
      }
    }
    this.slots = kept;
    this.evicted = 0;
    this.sinkShift = 0;
  }

  /** The stream's state, copied out. */
  save(): SinkCacheSnapshot {
    if (this.device) throw new SinkCacheError("a stream whose cache is kept on the GPU cannot be saved yet: run it on the CPU (device \"wasm\" or \"cpu\") to save it");
    const { head_dim, num_kv_heads, kv_type } = this.layout;
    const rows = this.batch * num_kv_heads;
    const sinks = this.sinksKept;
    const windowLength = this.attended - sinks;
    const attendedOnly = (name: string) => {
      const from = this.entries[name].data as KvArray;
      const out = allocateKv(kv_type, rows * this.attended * head_dim);
      for (let r = 0; r < rows; r++) {
        const source = r * this.stride * head_dim;
        const target = r * this.attended * head_dim;
        copyKv(from, source, sinks * head_dim, out, target);
        copyKv(from, source + (sinks + this.evicted) * head_dim, windowLength * head_dim, out, target + sinks * head_dim);
      }
      return out;
    };
    return {
      counters: { batch: this.batch, attended: this.attended, evicted: this.evicted, seen: this.seen, sinks_kept: sinks },
      keys: this.batch === 0 ? [] : this.keyNames.map(attendedOnly),
      values: this.batch === 0 ? [] : this.valueNames.map(attendedOnly),
      sink_keys: this.sinkKeys.map((keys) => keys.slice()),
    };
  }

  /** Continues the stream a {@link save} of a state with this policy and layout took (on a fresh state). */
  load(snapshot: SinkCacheSnapshot): void {
    if (this.batch !== 0) throw new SinkCacheError("a saved stream loads only into a cache that has not streamed yet");
    const { batch, attended, evicted, seen, sinks_kept } = snapshot.counters;
    const { capacity, sink_size, compaction_interval } = this.policy;
    const { head_dim, num_kv_heads, num_layers, kv_type } = this.layout;
    const whole = (n: number) => Number.isInteger(n) && n >= 0;
    const rows = batch * num_kv_heads;
    const sized = (arrays: readonly (KvArray | Float32Array)[], length: number, type: new (n: number) => KvArray | Float32Array) =>
      arrays.length === (batch === 0 ? 0 : num_layers) && arrays.every((array) => array instanceof type && array.length === length);
    const kvType = kv_type === "float32" ? Float32Array : Uint16Array;
    const sinkCopies = this.rule.rotation && batch > 0 ? num_layers : 0;
    if (
      ![batch, attended, evicted, seen, sinks_kept].every(whole) ||
      attended > capacity ||
      evicted > compaction_interval ||
      sinks_kept > Math.min(sink_size, attended) ||
      seen < attended + evicted ||
      (batch === 0 && seen > 0) ||
      !sized(snapshot.keys, rows * attended * head_dim, kvType) ||
      !sized(snapshot.values, rows * attended * head_dim, kvType) ||
      snapshot.sink_keys.length !== sinkCopies ||
      !snapshot.sink_keys.every((keys) => keys instanceof Float32Array && keys.length === rows * sink_size * head_dim)
    ) {
      throw new SinkCacheError("the saved stream does not fit this cache's settings and layout");
    }
    if (batch === 0) return;
    this.bind(batch);
    if (this.fixedSlots) this.allocateFixed();
    const slots = attended + evicted;
    const windowLength = attended - sinks_kept;
    const stride = this.fixedSlots || slots;
    /** Puts the saved slots back at theirs: into the fixed buffer bind() made, or a new one of `slots`. */
    const spread = (name: string, saved: KvArray) => {
      const out = this.fixedSlots ? (this.entries[name].data as KvArray) : allocateKv(kv_type, rows * slots * head_dim);
      for (let r = 0; r < rows; r++) {
        const source = r * attended * head_dim;
        const target = r * stride * head_dim;
        copyKv(saved, source, sinks_kept * head_dim, out, target);
        copyKv(saved, source + sinks_kept * head_dim, windowLength * head_dim, out, target + (sinks_kept + evicted) * head_dim);
      }
      if (!this.fixedSlots) this.entries[name] = new Tensor(kv_type, out, [batch, num_kv_heads, slots, head_dim]);
    };
    for (let i = 0; i < num_layers; i++) {
      spread(this.keyNames[i], snapshot.keys[i]);
      spread(this.valueNames[i], snapshot.values[i]);
      if (this.rule.rotation) this.sinkKeys[i].set(snapshot.sink_keys[i]);
    }
    this.slots = slots;
    this.evicted = evicted;
    this.seen = seen;
    this.sinksKept = sinks_kept;
    // The sink keys' rotation is not saved: the next pass rotates them again from their pristine copy, to the same values.
    this.sinkShift = 0;
  }

  /** The past key/value tensors to feed, by input name (the placeholder for fixed buffers before their first pass). */
  pastFeeds(): Record<string, Tensor> {
    const feeds: Record<string, Tensor> = {};
    const placeholder = this.slots === 0 ? this.placeholderPast : undefined;
    for (const name of [...this.keyNames, ...this.valueNames]) feeds[name] = placeholder ?? this.entries[name];
    return feeds;
  }
}

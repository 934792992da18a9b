/**
 * A sink cache's fixed buffers kept on the GPU where onnxruntime-web's WebGPU backend computes, for graphs
 * that return only the new tokens' keys and values (src/onnx/new_kv_only.ts). A step copies the new rows from
 * the presents into the buffers, GPU to GPU; moving the sinks runs one small graph on the pristine sink keys
 * (src/onnx/key_rotation_graph.ts), and compaction one per layer on the window. No cache byte crosses to the
 * CPU, whose sink cache keeps only the slot bookkeeping.
 */
import { Tensor } from "@huggingface/transformers";
import type { Tensor as OrtTensor } from "onnxruntime-common";
import { buildKeyRotationOnnx, KEY_ROTATION_IO } from "../onnx/key_rotation_graph.js";
import type { SlotRule } from "../positions/slot_rule.js";
import type { KvType } from "./kv_data.js";

/** The WebGPU objects used here (structural: the package does not depend on WebGPU's type declarations). */
/** Buffers are freed with the cache that holds them (garbage collected). */
export interface GpuBuffer {
  readonly size: number;
}
interface GpuCommandEncoder {
  copyBufferToBuffer(source: GpuBuffer, sourceOffset: number, target: GpuBuffer, targetOffset: number, size: number): void;
  finish(): unknown;
}
export interface GpuDevice {
  createBuffer(descriptor: { size: number; usage: number }): GpuBuffer;
  createCommandEncoder(): GpuCommandEncoder;
  readonly queue: { submit(commandBuffers: unknown[]): void };
}
/** The GPU buffer of a tensor onnxruntime-web keeps on the device. */
const bufferOf = (tensor: OrtTensor) => tensor.gpuBuffer as unknown as GpuBuffer;
/** GPUBufferUsage.COPY_SRC | COPY_DST | STORAGE. */
const BUFFER_USAGE = 0x0004 | 0x0008 | 0x0080;

/** A session of the runtime that computes the model, as far as the rotation graphs need one. */
export interface DeviceSession {
  run(feeds: Record<string, OrtTensor>): Promise<Record<string, OrtTensor>>;
}

/** What the device cache needs from the runtime the model's session runs on. */
export interface DeviceRuntime {
  device: GpuDevice;
  /** A tensor over a GPU buffer, of the runtime's own Tensor class. */
  fromGpuBuffer(buffer: GpuBuffer, type: KvType, dims: readonly number[]): OrtTensor;
  /** A CPU int64 scalar of the runtime's Tensor class. */
  int64(value: number): OrtTensor;
  /** The rotation graph session (whole or slice), made once on the same device with its outputs left there. */
  session(slice: boolean, model: () => Uint8Array): Promise<DeviceSession>;
}

export interface DeviceKvShape {
  num_layers: number;
  batch: number;
  num_kv_heads: number;
  head_dim: number;
  /** Slots per row of each buffer. */
  slots: number;
  sink_size: number;
  kv_type: KvType;
}

export class DeviceKv {
  private readonly keys: GpuBuffer[] = [];
  private readonly values: GpuBuffer[] = [];
  /** Every layer's sink keys as first written, [layers * rows, sink_size, head_dim]. */
  private readonly pristineSinks: GpuBuffer;
  /** Room to move one layer's window down (a buffer cannot be copied onto itself). */
  private readonly staging: GpuBuffer;
  private readonly rows: number;
  private readonly rowBytes: number;
  private readonly slotBytes: number;

  constructor(
    private readonly runtime: DeviceRuntime,
    private readonly shape: DeviceKvShape,
    private readonly rotation: SlotRule["rotation"],
  ) {
    const { num_layers, batch, num_kv_heads, head_dim, slots, sink_size, kv_type } = shape;
    this.rows = batch * num_kv_heads;
    this.slotBytes = head_dim * (kv_type === "float32" ? 4 : 2);
    this.rowBytes = slots * this.slotBytes;
    const buffer = (bytes: number) => runtime.device.createBuffer({ size: Math.max(4, bytes), usage: BUFFER_USAGE });
    for (let i = 0; i < num_layers; i++) {
      this.keys.push(buffer(this.rows * this.rowBytes));
      this.values.push(buffer(this.rows * this.rowBytes));
    }
    this.pristineSinks = buffer(num_layers * this.rows * sink_size * this.slotBytes);
    this.staging = buffer(this.rows * this.rowBytes);
  }

  /** Each layer's buffers as past feeds, [batch, kv_heads, slots, head_dim]. */
  pastTensors(): { keys: Tensor[]; values: Tensor[] } {
    const { batch, num_kv_heads, slots, head_dim, kv_type } = this.shape;
    const dims = [batch, num_kv_heads, slots, head_dim];
    const wrap = (buffer: GpuBuffer) => new Tensor(this.runtime.fromGpuBuffer(buffer, kv_type, dims));
    return { keys: this.keys.map(wrap), values: this.values.map(wrap) };
  }

  /** Copies n new tokens' rows (presents of [batch, kv_heads, n, head_dim], on the device) to slot `at`, then frees them. */
  writeNew(keys: readonly OrtTensor[], values: readonly OrtTensor[], at: number, n: number): void {
    const encoder = this.runtime.device.createCommandEncoder();
    const bytes = n * this.slotBytes;
    for (let i = 0; i < this.shape.num_layers; i++) {
      for (const [present, buffer] of [[keys[i], this.keys[i]], [values[i], this.values[i]]] as const) {
        const source = bufferOf(present);
        for (let r = 0; r < this.rows; r++) encoder.copyBufferToBuffer(source, r * bytes, buffer, r * this.rowBytes + at * this.slotBytes, bytes);
      }
    }
    this.runtime.device.queue.submit([encoder.finish()]);
    for (const present of [...keys, ...values]) present.dispose();
  }

  /** Keeps slots [from, from + count) of every layer's keys as the sinks' pristine copy. */
  keepSinks(from: number, count: number): void {
    const encoder = this.runtime.device.createCommandEncoder();
    for (let i = 0; i < this.shape.num_layers; i++) {
      for (let r = 0; r < this.rows; r++) {
        const target = ((i * this.rows + r) * this.shape.sink_size + from) * this.slotBytes;
        encoder.copyBufferToBuffer(this.keys[i], r * this.rowBytes + from * this.slotBytes, this.pristineSinks, target, count * this.slotBytes);
      }
    }
    this.runtime.device.queue.submit([encoder.finish()]);
  }

  /** Writes the first `sinks` sink keys into slots 0..sinks, rotated by `distance` from their own positions. */
  async placeSinks(sinks: number, distance: number): Promise<void> {
    const { num_layers, sink_size, head_dim, kv_type } = this.shape;
    let source = this.pristineSinks;
    let rotated: OrtTensor | undefined;
    if (distance !== 0) {
      const keys = this.runtime.fromGpuBuffer(this.pristineSinks, kv_type, [num_layers * this.rows, sink_size, head_dim]);
      rotated = (await (await this.rotationSession(false)).run({ [KEY_ROTATION_IO.keys]: keys, [KEY_ROTATION_IO.distance]: this.runtime.int64(distance) }))[KEY_ROTATION_IO.rotated];
      source = bufferOf(rotated);
    }
    const encoder = this.runtime.device.createCommandEncoder();
    for (let i = 0; i < num_layers; i++) {
      for (let r = 0; r < this.rows; r++) {
        encoder.copyBufferToBuffer(source, (i * this.rows + r) * sink_size * this.slotBytes, this.keys[i], r * this.rowBytes, sinks * this.slotBytes);
      }
    }
    this.runtime.device.queue.submit([encoder.finish()]);
    rotated?.dispose();
  }

  /**
   * Moves each row's window [windowStart, windowStart + length) down to slot `sinks`, keys rotated by
   * `keyDistance` (null: keys move as they are), and puts the pristine sinks back at their own positions.
   */
  async compact(sinks: number, windowStart: number, length: number, keyDistance: number | null): Promise<void> {
    const { num_layers, batch, num_kv_heads, slots, head_dim, kv_type } = this.shape;
    const bytes = length * this.slotBytes;
    const moveDown = (encoder: GpuCommandEncoder, buffer: GpuBuffer) => {
      for (let r = 0; r < this.rows; r++) encoder.copyBufferToBuffer(buffer, r * this.rowBytes + windowStart * this.slotBytes, this.staging, r * bytes, bytes);
      for (let r = 0; r < this.rows; r++) encoder.copyBufferToBuffer(this.staging, r * bytes, buffer, r * this.rowBytes + sinks * this.slotBytes, bytes);
    };
    for (let i = 0; i < num_layers; i++) {
      const encoder = this.runtime.device.createCommandEncoder();
      moveDown(encoder, this.values[i]);
      let rotated: OrtTensor | undefined;
      if (keyDistance === null) {
        moveDown(encoder, this.keys[i]);
      } else {
        const keys = this.runtime.fromGpuBuffer(this.keys[i], kv_type, [batch * num_kv_heads, slots, head_dim]);
        const feeds = {
          [KEY_ROTATION_IO.keys]: keys,
          [KEY_ROTATION_IO.distance]: this.runtime.int64(keyDistance),
          [KEY_ROTATION_IO.start]: this.runtime.int64(windowStart),
          [KEY_ROTATION_IO.length]: this.runtime.int64(length),
        };
        rotated = (await (await this.rotationSession(true)).run(feeds))[KEY_ROTATION_IO.rotated];
        const source = bufferOf(rotated);
        for (let r = 0; r < this.rows; r++) encoder.copyBufferToBuffer(source, r * bytes, this.keys[i], r * this.rowBytes + sinks * this.slotBytes, bytes);
      }
      this.runtime.device.queue.submit([encoder.finish()]);
      rotated?.dispose();
    }
    if (this.rotation) await this.placeSinks(sinks, 0);
  }

  private rotationSession(slice: boolean): Promise<DeviceSession> {
    if (!this.rotation) throw new Error("internal: keys rotate only for RoPE models");
    return this.runtime.session(slice, () => buildKeyRotationOnnx({ rotation: this.rotation!, kv_type: this.shape.kv_type, slice }));
  }
}

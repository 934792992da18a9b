/**
 * Device buffers for a stream whose model runs on onnxruntime-web's WebGPU backend: the runtime's GPU device
 * (transformers.js's onnx env), Tensor class (the presents') and session class (the model's session), so
 * the cache's buffers and rotation graphs live where the model computes.
 */
import { env } from "@huggingface/transformers";
import type { InferenceSession, Tensor as OrtTensor } from "onnxruntime-common";
import { DeviceKv, type DeviceKvShape, type GpuBuffer, type GpuDevice } from "../cache/device_kv.js";
import { SinkCacheError } from "../cache/sink_cache.js";
import type { SlotRule } from "../positions/slot_rule.js";
import type { DecoderSession } from "./decoder_contract.js";

interface RuntimeTensorClass {
  new (type: "int64", data: BigInt64Array, dims: readonly number[]): OrtTensor;
  fromGpuBuffer(buffer: GpuBuffer, options: { dataType: "float32" | "float16"; dims: readonly number[] }): OrtTensor;
}
interface RuntimeSessionClass {
  create(model: Uint8Array, options: InferenceSession.SessionOptions): Promise<InferenceSession>;
}

/** Makes a stream's device buffers on first use (the first pass that returns its presents on the GPU). */
export function webGpuKv(session: DecoderSession, rule: SlotRule): (shape: DeviceKvShape, present: OrtTensor) => Promise<DeviceKv> {
  // One rotation session of each kind serves every stream of the model.
  const sessions = new Map<boolean, Promise<InferenceSession>>();
  return async (shape, present) => {
    const webgpu = (env.backends.onnx as { webgpu?: { device?: Promise<GpuDevice> } }).webgpu;
    const device = await webgpu?.device;
    if (!device) {
      throw new SinkCacheError(`this session returns its KV cache as "${present.location}" but no WebGPU device is known to onnxruntime: only WebGPU keeps a stream's cache on the GPU`);
    }
    const Tensor = present.constructor as unknown as RuntimeTensorClass;
    const Session = Object.getPrototypeOf(session).constructor as RuntimeSessionClass;
    const runtime = {
      device,
      fromGpuBuffer: (buffer: GpuBuffer, type: "float32" | "float16", dims: readonly number[]) => Tensor.fromGpuBuffer(buffer, { dataType: type, dims }),
      int64: (value: number) => new Tensor("int64", BigInt64Array.of(BigInt(value)), []),
      session: (slice: boolean, model: () => Uint8Array) => {
        let made = sessions.get(slice);
        if (!made) sessions.set(slice, (made = Session.create(model(), { executionProviders: ["webgpu"], preferredOutputLocation: "gpu-buffer" })));
        return made;
      },
    };
    return new DeviceKv(runtime, shape, rule.rotation);
  };
}

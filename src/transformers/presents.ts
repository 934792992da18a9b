/**
 * Where the sink cache receives a pass's presents (`present.{i}.key/value`: the past with the new tokens
 * appended, or the new tokens alone). Presents a session returns on a device are downloaded here first,
 * unless the sink cache keeps its buffers there.
 *
 * DOWNLOAD BASELINE: transformers.js keeps presents on WebGPU as `gpu-buffer` tensors (whatever the session
 * options say). For graphs that return the whole cache (other exporters'), this downloads it every step, and
 * the next pass uploads it again: correct, and the measured baseline. Graphs that return the new keys and
 * values alone keep them on the device, where the sink cache's buffers are (src/cache/device_kv.ts).
 */
import { Tensor } from "@huggingface/transformers";
import type { Tensor as OrtTensor } from "onnxruntime-common";
import { SinkCacheError } from "../cache/sink_cache.js";
import { presentName } from "./decoder_contract.js";

export interface Presents {
  keys: Tensor[];
  values: Tensor[];
}

/**
 * Each layer's present key and value, on the CPU, or, for a graph that returns the new keys and values
 * alone (`keepOnDevice`), where the session returned them: the sink cache then keeps its buffers there.
 */
export async function receivePresents(outputs: Readonly<Record<string, OrtTensor>>, numLayers: number, keepOnDevice = false): Promise<Presents> {
  const layer = (i: number, part: "key" | "value") => {
    const present = outputs[presentName(i, part)];
    if (!present) throw new SinkCacheError(`the model returned no present.${i}.${part}: it does not follow the transformers.js decoder contract`);
    return keepOnDevice && present.location === "gpu-buffer" ? new Tensor(present) : downloadToCpu(present);
  };
  const layers = Array.from({ length: numLayers }, (_, i) => i);
  const [keys, values] = await Promise.all([Promise.all(layers.map((i) => layer(i, "key"))), Promise.all(layers.map((i) => layer(i, "value")))]);
  return { keys, values };
}

/**
 * The baseline's one step: a device tensor's data read back (its device buffer released). Only the session's
 * own CPU tensors are wrapped as they are: a bundle or a Node process may hold two onnxruntime-common
 * `Tensor` classes (onnxruntime-web inlines its own; ESM and CommonJS builds differ), and transformers.js
 * wraps only instances of its runtime's class, so downloaded data is handed over as a fresh tensor.
 */
async function downloadToCpu(present: OrtTensor): Promise<Tensor> {
  if (present.location === "cpu" || present.location === "cpu-pinned") return new Tensor(present);
  const data = await present.getData(true);
  return new Tensor(present.type as Tensor["type"], data as Tensor["data"], [...present.dims]);
}

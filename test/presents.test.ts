/**
 * The presents the sink cache receives: a device tensor (as transformers.js returns them on WebGPU) is
 * downloaded to the CPU and its device buffer released; the download baseline in every run, GPU or not.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import * as ort from "onnxruntime-node";
import { SinkCacheError } from "../src/cache/sink_cache.js";
import { receivePresents } from "../src/transformers/presents.js";

// The session's runtime's class, as transformers.js recognises its outputs.
const OrtTensor = ort.Tensor;

function deviceTensor(values: number[], released: string[], name: string): ort.Tensor {
  const buffer = {} as Parameters<typeof OrtTensor.fromGpuBuffer>[0];
  return OrtTensor.fromGpuBuffer(buffer, {
    dataType: "float32",
    dims: [1, 1, values.length / 2, 2],
    download: async () => Float32Array.from(values),
    dispose: () => released.push(name),
  });
}

test("presents on a device come back on the CPU with their values, and their device buffers are released", async () => {
  const released: string[] = [];
  const outputs = {
    "present.0.key": deviceTensor([1, 2, 3, 4], released, "k0"),
    "present.0.value": deviceTensor([5, 6, 7, 8], released, "v0"),
    "present.1.key": new OrtTensor("float32", Float32Array.of(9, 10), [1, 1, 1, 2]),
    "present.1.value": deviceTensor([11, 12], released, "v1"),
  };
  const { keys, values } = await receivePresents(outputs, 2);
  assert.deepEqual(keys.map((tensor) => tensor.location), ["cpu", "cpu"]);
  assert.deepEqual(values.map((tensor) => tensor.location), ["cpu", "cpu"]);
  assert.deepEqual([...(keys[0].data as Float32Array)], [1, 2, 3, 4]);
  assert.deepEqual([...(values[1].data as Float32Array)], [11, 12]);
  assert.deepEqual(keys[0].dims, [1, 1, 2, 2]);
  assert.deepEqual(released.sort(), ["k0", "v0", "v1"]);
});

test("a pass without a layer's present is refused, naming it", async () => {
  const outputs = { "present.0.key": new OrtTensor("float32", Float32Array.of(1, 2), [1, 1, 1, 2]) };
  await assert.rejects(receivePresents(outputs, 1), (error: Error) => error instanceof SinkCacheError && /present\.0\.value/.test(error.message));
});

/**
 * The test page's script, bundled with the package's browser entry: it sets transformers.js up to load only
 * from the page's own server and exposes the greedy stream to the test driving the browser.
 */
import * as api from "attention-sinks";
import { greedyStream, pipelineGreedy, type GreedyStreamRequest } from "./greedy_stream.js";

api.env.allowLocalModels = true;
api.env.allowRemoteModels = false;
api.env.localModelPath = "/models/";
api.env.useBrowserCache = false;
api.env.backends.onnx.wasm!.wasmPaths = "/ort/";

/**
 * Every transfer between the GPU and the page, in bytes: buffers mapped for reading (downloads) and queue
 * writes (uploads), so a test can tell what a stream's steps move.
 */
const transfers = { downloads: [] as number[], uploads: [] as number[] };
type Counted = { prototype: Record<string, unknown> };
const scope = globalThis as unknown as { GPUBuffer?: Counted; GPUQueue?: Counted };
if (scope.GPUBuffer && scope.GPUQueue) {
  const mapAsync = scope.GPUBuffer.prototype.mapAsync as (this: { size: number }, mode: number, ...rest: unknown[]) => Promise<void>;
  scope.GPUBuffer.prototype.mapAsync = function (this: { size: number }, mode: number, ...rest: unknown[]) {
    if (mode & 1) transfers.downloads.push(this.size); // GPUMapMode.READ
    return mapAsync.call(this, mode, ...rest);
  };
  const writeBuffer = scope.GPUQueue.prototype.writeBuffer as (this: unknown, buffer: unknown, offset: number, data: ArrayBufferView | ArrayBuffer, ...rest: unknown[]) => void;
  scope.GPUQueue.prototype.writeBuffer = function (this: unknown, buffer: unknown, offset: number, data: ArrayBufferView | ArrayBuffer, ...rest: unknown[]) {
    const [dataOffset = 0, size] = rest as [number?, number?];
    const elementBytes = ArrayBuffer.isView(data) && "BYTES_PER_ELEMENT" in data ? (data as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT : 1;
    transfers.uploads.push(size === undefined ? data.byteLength - dataOffset * elementBytes : size * elementBytes);
    return writeBuffer.call(this, buffer, offset, data, ...rest);
  };
}

Object.assign(globalThis, {
  gpuTransfers: () => transfers,
  greedyStream: (request: GreedyStreamRequest) => greedyStream(api, request),
  pipelineGreedy: (request: GreedyStreamRequest & { prompt: string }) => pipelineGreedy(api, request),
  /** The threads onnxruntime-web computes wasm with (set when the first session loads). */
  wasmThreads: () => api.env.backends.onnx.wasm!.numThreads,
});

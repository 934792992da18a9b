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

Object.assign(globalThis, {
  greedyStream: (request: GreedyStreamRequest) => greedyStream(api, request),
  pipelineGreedy: (request: GreedyStreamRequest & { prompt: string }) => pipelineGreedy(api, request),
  /** The threads onnxruntime-web computes wasm with (set when the first session loads). */
  wasmThreads: () => api.env.backends.onnx.wasm!.numThreads,
});

/**
 * attention-sinks: endless, constant-memory generation for transformers.js decoders (StreamingLLM).
 * Everything transformers.js exports is re-exported; the decoder loaders and `pipeline` stream. This is the
 * Node entry: the browser entry's API, with loaders that also take checkpoints on disk (converted on first
 * use), plus conversion, the perplexity benchmark, llama.cpp and the streaming backends.
 */
import { useModelPlatform } from "./transformers/model_platform.js";
import { nodeModelPlatform } from "./transformers/node_model_platform.js";

useModelPlatform(nodeModelPlatform);

export * from "./browser.js";
export {
  ConversionError,
  ModelNotFoundError,
  DEFAULT_CONVERSION_CACHE,
  convertCheckpoint,
  convertCheckpointToGguf,
  resolveGgufSource,
  resolveModelSource,
  type ConvertOptions,
  type ResolveModelSourceOptions,
} from "./convert/index.js";
export {
  evaluatePerplexity,
  loadTextSamples,
  readExperimentTables,
  runPerplexity,
  writePlot,
  type EvaluationOptions,
  type PerplexityRunOptions,
  type PlotOptions,
  type TokenRecord,
} from "./perplexity/index.js";
export { loadTransformersBackend, type BackendLoadOptions } from "./transformers/backend.js";
export { KV_CACHE_TYPES, loadLlamaCppBackend, LlamaCppStream, type KvCacheType, type LlamaCppLoadOptions } from "./llama_cpp/backend.js";
export { LlamaCppUnavailableError, NODE_LLAMA_CPP_VERSION } from "./llama_cpp/bindings.js";
export { BACKENDS, BackendOptionError, defaultBackend, loadStreamingBackend, type BackendName, type StreamingLoadOptions } from "./engines/load.js";

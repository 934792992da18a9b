/**
 * attention-sinks: endless, constant-memory generation for transformers.js decoders (StreamingLLM).
 * Everything transformers.js exports is re-exported; the decoder loaders and `pipeline` stream.
 */
export * from "@huggingface/transformers";
export {
  AutoModelForCausalLM,
  AutoTokenizer,
  BloomForCausalLM,
  CodeGenForCausalLM,
  CohereForCausalLM,
  ExaoneForCausalLM,
  FalconForCausalLM,
  GPT2LMHeadModel,
  GPTJForCausalLM,
  GPTNeoForCausalLM,
  GPTNeoXForCausalLM,
  Gemma2ForCausalLM,
  GemmaForCausalLM,
  GraniteForCausalLM,
  LlamaForCausalLM,
  MistralForCausalLM,
  MptForCausalLM,
  OPTForCausalLM,
  Olmo2ForCausalLM,
  OlmoForCausalLM,
  Phi3ForCausalLM,
  PhiForCausalLM,
  Qwen2ForCausalLM,
  Qwen3ForCausalLM,
  StableLmForCausalLM,
  Starcoder2ForCausalLM,
  pipeline,
  type StreamingModel,
  type StreamingModelOptions,
} from "./transformers/models.js";
export { enableAttentionSinks, type AttentionSinkModel, type WithAttentionSinks } from "./transformers/enable.js";
export { cacheStats, sinkCacheStats } from "./transformers/stream_registry.js";
export type { StreamingForwardInputs, StreamingForwardOutput } from "./transformers/streaming_forward.js";
export type { AttentionSinkSettings } from "./cache/streaming_policy.js";
export {
  AttentionSinkOptionError,
  DEFAULT_ATTENTION_SINK_SIZE,
  DEFAULT_ATTENTION_SINK_WINDOW_SIZE,
  type AttentionSinkOptions,
} from "./cache/options.js";
export { SinkCacheError, type SinkCacheStats } from "./cache/sink_cache.js";
export { SUPPORTED_MODEL_TYPES, UnsupportedModelError } from "./positions/families.js";
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
export type { ChatMessage, StreamingBackend, TextTokenizer } from "./backend/backend.js";
export { EXPERIMENTS, type CacheSizes, type Experiment } from "./backend/experiments.js";
export { loadTransformersBackend, type BackendLoadOptions } from "./transformers/backend.js";
export { KV_CACHE_TYPES, loadLlamaCppBackend, LlamaCppStream, type KvCacheType, type LlamaCppLoadOptions } from "./llama_cpp/backend.js";
export { LlamaCppUnavailableError, NODE_LLAMA_CPP_VERSION } from "./llama_cpp/bindings.js";
export { BACKENDS, BackendOptionError, defaultBackend, loadStreamingBackend, type BackendName, type StreamingLoadOptions } from "./engines/load.js";
export { GenerationSession, type SamplingOptions, type TurnOptions, type TurnResult } from "./generation/session.js";
export { Chat, parsePrompts } from "./generation/chat.js";
export { TopKTopPFilter, WindowedRepetitionPenalty } from "./generation/logits_processors.js";
export { IncrementalTextDecoder } from "./generation/text_decoder.js";

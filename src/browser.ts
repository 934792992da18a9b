/**
 * attention-sinks in a browser (the package's `browser` export condition): the streaming loaders, `pipeline`
 * and the cache's counters, on transformers.js's web build (wasm or WebGPU). Nothing here imports a Node
 * module. Features that read or write files (checkpoint conversion, perplexity runs, plots, llama.cpp, the
 * server) are only in the Node entry, which is this module plus them.
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
export type { ChatMessage, StreamingBackend, TextTokenizer } from "./backend/backend.js";
export { EXPERIMENTS, type CacheSizes, type Experiment } from "./backend/experiments.js";
export { GenerationSession, type SamplingOptions, type TurnOptions, type TurnResult } from "./generation/session.js";
export { Chat, parsePrompts } from "./generation/chat.js";
export { TopKTopPFilter, WindowedRepetitionPenalty } from "./generation/logits_processors.js";
export { IncrementalTextDecoder } from "./generation/text_decoder.js";

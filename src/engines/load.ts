/**
 * Which engine streams a model, and loading it: onnxruntime (through transformers.js) or llama.cpp (through
 * node-llama-cpp). A `.gguf` file goes to llama.cpp unless onnxruntime is asked for, which converts it to
 * ONNX on first use; everything else goes to onnxruntime unless llama.cpp is asked for, which converts it
 * to GGUF on first use.
 */
import type { StreamingBackend } from "../backend/backend.js";
import { loadLlamaCppBackend, type LlamaCppLoadOptions } from "../llama_cpp/backend.js";
import { loadTransformersBackend, type BackendLoadOptions } from "../transformers/backend.js";

export const BACKENDS = ["onnxruntime", "llama.cpp"] as const;
export type BackendName = (typeof BACKENDS)[number];

export interface StreamingLoadOptions
  extends BackendLoadOptions,
    Pick<LlamaCppLoadOptions, "kv_cache_type" | "context_size" | "attention_sink_eviction_interval"> {
  /** The engine (default: llama.cpp for a `.gguf` file, onnxruntime for anything else). */
  backend?: BackendName;
}

/** Options that only one engine takes, by the engine that takes them. */
const ENGINE_OPTIONS: Record<BackendName, readonly (keyof StreamingLoadOptions)[]> = {
  onnxruntime: ["dtype", "device"],
  "llama.cpp": ["kv_cache_type", "context_size", "attention_sink_eviction_interval"],
};

/** An option given for an engine that does not take it. */
export class BackendOptionError extends Error {
  override name = "BackendOptionError";

  constructor(
    readonly option: string,
    readonly backend: BackendName,
  ) {
    super(`${option} applies to the ${backend === "llama.cpp" ? "onnxruntime" : "llama.cpp"} backend, not to ${backend}`);
  }
}

/** The engine a model goes to when none is named. */
export function defaultBackend(model: string): BackendName {
  return model.toLowerCase().endsWith(".gguf") ? "llama.cpp" : "onnxruntime";
}

/** Loads `model` as a stream on the engine the options name (or its default). */
export async function loadStreamingBackend(model: string, options: StreamingLoadOptions = {}): Promise<StreamingBackend> {
  const backend = options.backend ?? defaultBackend(model);
  const other = backend === "llama.cpp" ? "onnxruntime" : "llama.cpp";
  for (const option of ENGINE_OPTIONS[other]) {
    if (options[option] !== undefined) throw new BackendOptionError(option, backend);
  }
  return backend === "llama.cpp" ? loadLlamaCppBackend(model, options) : loadTransformersBackend(model, options);
}

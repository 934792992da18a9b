/**
 * What the loaders do differently where they run. In a browser a model name goes to transformers.js as
 * given (a Hub id, or a URL path under `env.localModelPath`); in Node a name may also be a checkpoint on
 * disk, converted on first use, and the graph loaded from disk is checked against its config. The Node
 * entry installs its platform when it loads; the browser entry keeps this plain one.
 */
import type { AttentionSinkSettings } from "../cache/streaming_policy.js";
import type { ModelConfig } from "../positions/families.js";

export interface ModelPlatform {
  /** What `from_pretrained` gets for a name: the source, and loading options (local files only, revision). */
  source(name: string, conversion?: { dtype?: string }): Promise<{ path: string; files: { local_files_only?: boolean; revision?: string } }>;
  /** Runs a transformers.js load of a resolved source, saying what was looked for when it is not found. */
  loading<T>(path: string, load: () => Promise<T>): Promise<T>;
  /** Refuses a model folder without the tokenizer files, naming them. */
  checkTokenizer(path: string, files: { local_files_only?: boolean }): void;
  /** Checks the graph a streaming model loaded against how it will stream. */
  checkGraph(path: string, dtype: string | undefined, config: ModelConfig, settings: AttentionSinkSettings): Promise<void>;
}

/** transformers.js's own loading: no conversion, no files to read beside the ones it fetches. */
const plainPlatform: ModelPlatform = {
  source: async (name) => ({ path: name, files: {} }),
  loading: (_path, load) => load(),
  checkTokenizer: () => {},
  checkGraph: async () => {},
};

let platform = plainPlatform;

export function modelPlatform(): ModelPlatform {
  return platform;
}

/** Installs the loaders' platform (the Node entry does, once, as it loads). */
export function useModelPlatform(chosen: ModelPlatform): void {
  platform = chosen;
}

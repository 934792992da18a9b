/** The loaders' platform in Node: checkpoints converted on first use, graphs checked from disk. */
import { checkTokenizerFiles } from "../convert/index.js";
import { loadingFrom, pretrainedSource } from "./backend.js";
import { checkLoadedGraph } from "./graph_checks.js";
import type { ModelPlatform } from "./model_platform.js";

export const nodeModelPlatform: ModelPlatform = {
  source: (name, conversion) => pretrainedSource(name, undefined, conversion),
  loading: loadingFrom,
  checkTokenizer: (path, files) => {
    if (files.local_files_only) checkTokenizerFiles(path);
  },
  checkGraph: checkLoadedGraph,
};

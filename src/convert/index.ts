/** Checkpoint conversion: the public API of this folder. */
export { convertCheckpoint, convertCheckpointToGguf, MODEL_FILES, type ConvertDtype, type ConvertOptions } from "./convert.js";
export { ConversionError, ModelNotFoundError } from "./errors.js";
export { checkModelFiles, checkTokenizerFiles } from "./model_directory.js";
export { DEFAULT_CONVERSION_CACHE, resolveGgufSource, resolveModelSource, type ResolveModelSourceOptions } from "./model_source.js";

/**
 * The files of a transformers.js model directory, checked before transformers.js reads them: it reports an
 * empty, truncated or missing file with a message that names no file (or with bytes of unrelated memory),
 * and an empty ONNX file with onnxruntime's internals.
 */
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { resolveGeometry, SUPPORTED_MODEL_TYPES, UnsupportedModelError } from "../positions/families.js";
import { readJsonFile } from "./bounded_reader.js";
import { ConversionError } from "./errors.js";

const MAX_CONFIG_BYTES = 16 << 20;
const MAX_TOKENIZER_BYTES = 512 << 20;

function jsonObject(path: string, maxBytes: number): Record<string, unknown> {
  const { value } = readJsonFile(path, maxBytes);
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new ConversionError(path, "is not a JSON object");
  return value as Record<string, unknown>;
}

/**
 * The model's `config.json`: a JSON object whose numbers, for a family attention-sinks streams, describe a
 * model (counts positive, RoPE base and factors finite and positive, numbers not written as strings).
 */
export function checkConfigFile(dir: string): void {
  const path = join(dir, "config.json");
  const config = jsonObject(path, MAX_CONFIG_BYTES);
  // Plain transformers.js runs other families too; their configs are theirs to read.
  if (!SUPPORTED_MODEL_TYPES.includes(String(config.model_type))) return;
  try {
    resolveGeometry(config);
  } catch (error) {
    if (error instanceof UnsupportedModelError) throw new ConversionError(path, error.message, { cause: error });
    throw error;
  }
}

/** The ONNX graphs in `onnx/`: at least one, and each a regular file with content. */
export function checkOnnxFiles(dir: string): void {
  const onnxDir = join(dir, "onnx");
  const graphs = readdirSync(onnxDir).filter((name) => name.endsWith(".onnx"));
  if (graphs.length === 0) {
    throw new ConversionError(onnxDir, "holds no .onnx file: a transformers.js model directory needs its ONNX graph, onnx/model.onnx");
  }
  for (const name of graphs) {
    const path = join(onnxDir, name);
    const kind = statSync(path);
    if (kind.isDirectory()) throw new ConversionError(path, "is a directory, not an ONNX graph file");
    if (!kind.isFile()) throw new ConversionError(path, "is not a regular file, so it cannot be an ONNX graph");
    if (kind.size === 0) throw new ConversionError(path, "is empty (0 bytes): export or copy the ONNX graph again");
  }
}

/** `config.json` and the ONNX graphs of a transformers.js model directory. */
export function checkModelFiles(dir: string): void {
  checkConfigFile(dir);
  checkOnnxFiles(dir);
}

/**
 * `tokenizer.json` (with a vocabulary) and `tokenizer_config.json`, as transformers.js tokenizers need them.
 * @returns how many token ids the tokenizer covers (its highest id plus one).
 */
export function checkTokenizerFiles(dir: string): number {
  const missing = (file: string) => (error: unknown) => {
    if (error instanceof ConversionError && /ENOENT/.test(error.problem)) {
      throw new ConversionError(join(dir, file), "is missing: a transformers.js tokenizer needs tokenizer.json and tokenizer_config.json");
    }
    throw error;
  };
  let tokenizer: Record<string, unknown> = {};
  try {
    tokenizer = jsonObject(join(dir, "tokenizer.json"), MAX_TOKENIZER_BYTES);
  } catch (error) {
    missing("tokenizer.json")(error);
  }
  try {
    jsonObject(join(dir, "tokenizer_config.json"), MAX_CONFIG_BYTES);
  } catch (error) {
    missing("tokenizer_config.json")(error);
  }
  const vocab = (tokenizer.model as { vocab?: unknown } | undefined)?.vocab;
  // BPE and WordPiece map tokens to ids; Unigram lists [token, score] pairs by id.
  const ids = Array.isArray(vocab) ? vocab.map((_, id) => id) : vocab && typeof vocab === "object" ? Object.values(vocab) : [];
  if (ids.length === 0) throw new ConversionError(join(dir, "tokenizer.json"), "has no vocabulary (model.vocab is missing or empty)");
  const added = Array.isArray(tokenizer.added_tokens) ? tokenizer.added_tokens.map((token) => (token as { id?: unknown } | null)?.id) : [];
  let highest = -1;
  for (const id of [...ids, ...added]) if (typeof id === "number" && id > highest) highest = id;
  return highest + 1;
}

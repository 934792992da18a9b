/**
 * The files of a transformers.js model directory, checked before transformers.js reads them: it reports an
 * empty, truncated or missing file with a message that names no file (or with bytes of unrelated memory).
 */
import { join } from "node:path";
import { readJsonFile } from "./bounded_reader.js";
import { ConversionError } from "./errors.js";

const MAX_CONFIG_BYTES = 16 << 20;
const MAX_TOKENIZER_BYTES = 512 << 20;

function jsonObject(path: string, maxBytes: number): Record<string, unknown> {
  const { value } = readJsonFile(path, maxBytes);
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new ConversionError(path, "is not a JSON object");
  return value as Record<string, unknown>;
}

/** The model's `config.json`: a regular file holding a JSON object. */
export function checkModelFiles(dir: string): void {
  jsonObject(join(dir, "config.json"), MAX_CONFIG_BYTES);
}

/** `tokenizer.json` (with a vocabulary) and `tokenizer_config.json`, as transformers.js tokenizers need them. */
export function checkTokenizerFiles(dir: string): void {
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
  const size = Array.isArray(vocab) ? vocab.length : vocab && typeof vocab === "object" ? Object.keys(vocab).length : 0;
  if (size === 0) throw new ConversionError(join(dir, "tokenizer.json"), "has no vocabulary (model.vocab is missing or empty)");
}

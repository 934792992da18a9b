/**
 * Hugging Face Llama-family model directories: `config.json`, weights in `model.safetensors` or shards listed
 * by `model.safetensors.index.json`, and `tokenizer.json` (with `tokenizer_config.json` and
 * `generation_config.json` when present). Weights already use the Hugging Face names and RoPE layout.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { DecoderSpec } from "../architecture/decoder_spec.js";
import { BoundedReader, openFileSource, readJsonFile, type ByteSource } from "./bounded_reader.js";
import { checkWeightShapes, type Checkpoint, type TensorEntry } from "./checkpoint.js";
import { ConversionError } from "./errors.js";
import { decoderSpecFromLlamaConfig } from "./hf_llama.js";
import { readSafetensors } from "./safetensors.js";

const MAX_CONFIG_BYTES = 1 << 20;
const MAX_TOKENIZER_BYTES = 256 << 20;
const SINGLE_FILE = "model.safetensors";
const INDEX_FILE = "model.safetensors.index.json";

/** Opens a Hugging Face model directory. */
export function readHfCheckpoint(dir: string): Checkpoint {
  const configPath = join(dir, "config.json");
  if (!existsSync(configPath)) throw new ConversionError(dir, "is not a model directory: it has no config.json");
  const config = readJsonFile(configPath, MAX_CONFIG_BYTES);
  const spec = decoderSpecFromLlamaConfig(config.value, configPath);
  const files = new Map<string, string>([["config.json", config.text]]);
  const inputs = [configPath];
  for (const name of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
    const path = join(dir, name);
    if (!existsSync(path)) continue;
    files.set(name, readJsonFile(path, MAX_TOKENIZER_BYTES).text);
    inputs.push(path);
  }
  if (!files.has("tokenizer.json")) {
    throw new ConversionError(dir, "has no tokenizer.json (a SentencePiece tokenizer.model alone is not supported)");
  }
  // transformers.js loads a tokenizer only when tokenizer_config.json exists.
  if (!files.has("tokenizer_config.json")) files.set("tokenizer_config.json", "{}");
  if (!files.has("generation_config.json")) {
    // The output directory always has one; the special ids come from config.json.
    const { bos_token_id, eos_token_id } = config.value as Record<string, unknown>;
    files.set("generation_config.json", JSON.stringify({ bos_token_id, eos_token_id }, null, 2));
  }

  const sources: ByteSource[] = [];
  try {
    const shards = shardFiles(dir).map((name) => {
      const source = openFileSource(join(dir, name));
      sources.push(source);
      return source;
    });
    return {
      source: dir,
      inputs: [...inputs, ...sources.map((source) => source.name)],
      spec,
      tensors: huggingFaceWeights(dir, spec, shards),
      files,
      close() {
        for (const source of sources) source.close();
      },
    };
  } catch (error) {
    for (const source of sources) source.close();
    throw error;
  }
}

/** The safetensors files holding the weights. */
function shardFiles(dir: string): string[] {
  if (existsSync(join(dir, SINGLE_FILE))) return [SINGLE_FILE];
  const indexPath = join(dir, INDEX_FILE);
  if (!existsSync(indexPath)) {
    throw new ConversionError(
      dir,
      `has no ONNX graph (onnx/model.onnx) to load as a transformers.js model, and no ${SINGLE_FILE} or ${INDEX_FILE} ` +
        "to convert as a Hugging Face checkpoint (only safetensors weights are supported)",
    );
  }
  const weightMap = (readJsonFile(indexPath, MAX_TOKENIZER_BYTES).value as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== "object" || weightMap === null) throw new ConversionError(indexPath, "has no weight_map object");
  const shards = new Set<string>();
  for (const shard of Object.values(weightMap)) {
    // Shards must sit in the directory itself: a path in an untrusted index must not reach other files.
    if (typeof shard !== "string" || !/^[\w.-]+\.safetensors$/.test(shard)) {
      throw new ConversionError(indexPath, `names the shard ${JSON.stringify(shard)}, not a safetensors file in the directory`);
    }
    shards.add(shard);
  }
  return [...shards].sort();
}

/**
 * The Llama weights in the safetensors `shards` of a Hugging Face checkpoint, checked against `spec`.
 * Tied models may store the shared matrix under either name; RoPE's cached `inv_freq` buffers are dropped.
 * @param source the checkpoint, for error messages.
 */
export function huggingFaceWeights(source: string, spec: DecoderSpec, shards: readonly ByteSource[]): Map<string, TensorEntry> {
  const tensors = new Map<string, TensorEntry>();
  for (const shard of shards) {
    for (const [name, entry] of readSafetensors(new BoundedReader(shard))) {
      if (name.endsWith(".rotary_emb.inv_freq")) continue;
      if (tensors.has(name)) throw new ConversionError(shard.name, `the tensor ${name} is also in another shard`);
      tensors.set(name, entry);
    }
  }
  if (spec.tie_word_embeddings) {
    const head = tensors.get("lm_head.weight");
    if (head && !tensors.has("model.embed_tokens.weight")) tensors.set("model.embed_tokens.weight", head);
    tensors.delete("lm_head.weight");
  }
  checkWeightShapes(source, spec, tensors);
  return tensors;
}

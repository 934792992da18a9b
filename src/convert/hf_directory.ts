/**
 * Hugging Face model directories of the families in src/convert/hf_families.ts: `config.json`, weights in
 * `model.safetensors` or shards listed by `model.safetensors.index.json`, and `tokenizer.json` (with
 * `tokenizer_config.json` and `generation_config.json` when present). Weights are renamed and unfused into
 * the spec's Llama names as the family's row says; the RoPE layout is already Hugging Face's.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { weightShapes, type DecoderSpec, type WeightTensor } from "../architecture/decoder_spec.js";
import { BoundedReader, openFileSource, readJsonFile, type ByteSource } from "./bounded_reader.js";
import { checkWeightShapes, type Checkpoint, type TensorEntry } from "./checkpoint.js";
import { ConversionError } from "./errors.js";
import { decoderSpecFromHfConfig, type FusedWeight, type HfFamily } from "./hf_families.js";
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
  const { spec, family } = decoderSpecFromHfConfig(config.value, configPath);
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
      tensors: huggingFaceWeights(dir, spec, family, shards),
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
 * The weights in the safetensors `shards` of a Hugging Face checkpoint under the spec's names, checked against
 * `spec`: renamed, unfused and offset as `family` says. Tied models may store the shared matrix under either
 * name; RoPE's cached `inv_freq` buffers are dropped.
 * @param source the checkpoint, for error messages.
 */
export function huggingFaceWeights(source: string, spec: DecoderSpec, family: HfFamily, shards: readonly ByteSource[]): Map<string, TensorEntry> {
  const renames = family.renames.map(([from, to]) => [layerPattern(from, false), to] as const);
  const fused = family.fused.map((rule) => [layerPattern(rule.from, true), rule] as const);
  const tensors = new Map<string, TensorEntry>();
  const add = (shard: string, name: string, entry: TensorEntry) => {
    if (tensors.has(name)) throw new ConversionError(shard, `the tensor ${name} is also in another shard (or under another name)`);
    tensors.set(name, entry);
  };
  for (const shard of shards) {
    for (const [stored, entry] of readSafetensors(new BoundedReader(shard))) {
      if (stored.endsWith(".rotary_emb.inv_freq")) continue;
      const split = fused.find(([pattern]) => pattern.test(stored));
      if (split) {
        const layer = Number(split[0].exec(stored)![1]);
        for (const [name, part] of unfuse(source, stored, entry, split[1], layer, spec)) add(shard.name, name, part);
        continue;
      }
      let name = stored;
      for (const [pattern, to] of renames) {
        const match = pattern.exec(stored);
        if (!match) continue;
        name = to.replace("{i}", match[1] ?? "") + stored.slice(match[0].length);
        break;
      }
      add(shard.name, name, family.norm_weight_offset && /norm\.weight$/.test(name) ? offsetEntry(entry, family.norm_weight_offset) : entry);
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

/** A checkpoint name pattern (`{i}` the layer) as a regex: the whole name, or a prefix of it. */
function layerPattern(pattern: string, whole: boolean): RegExp {
  const escaped = pattern.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace("{i}", "(\\d+)");
  return new RegExp(`^${escaped}${whole ? "$" : ""}`);
}

/** Adds `offset` to every element on load (Gemma's norms multiply by 1 + weight). */
function offsetEntry(entry: TensorEntry, offset: number): TensorEntry {
  return {
    shape: entry.shape,
    problem: entry.problem,
    load() {
      const tensor = entry.load();
      return { shape: tensor.shape, data: tensor.data.map((value) => value + offset) };
    },
  };
}

/**
 * The spec weights a fused matrix of layer `layer` holds, each loading its rows of the fused tensor. The fused
 * tensor is read once for all its parts (the graph asks for them close together) and let go once each part
 * has been taken, so conversion holds at most a layer's fused tensors.
 */
function unfuse(source: string, stored: string, entry: TensorEntry, rule: FusedWeight, layer: number, spec: DecoderSpec): [string, TensorEntry][] {
  const prefix = `model.layers.${layer}.`;
  const shapes = weightShapes(spec);
  const parts = rule.into.map((name) => {
    const shape = shapes.get(prefix + name);
    // A layer past num_hidden_layers (or a bias the config does not give the model).
    if (!shape) throw new ConversionError(source, `the weight ${stored} does not belong to the configured model`);
    return { name: prefix + name, shape };
  });
  // Matrices split by rows; bias vectors by elements, as rows of one.
  const columns = parts[0].shape[1] ?? 1;
  const rows = parts.reduce((sum, part) => sum + part.shape[0], 0);
  const fusedShape = parts[0].shape.length === 2 ? [rows, columns] : [rows];
  if (entry.shape.length !== fusedShape.length || entry.shape.some((size, i) => size !== fusedShape[i])) {
    throw new ConversionError(source, `the weight ${stored} has shape [${entry.shape.join(", ")}], but the model's configuration needs [${fusedShape.join(", ")}]`);
  }
  // Row blocks of each part in the fused matrix, in units of head_dim rows for kv_groups.
  const blocks = rule.layout === "concatenated" ? concatenatedBlocks(parts.map((part) => part.shape[0])) : kvGroupBlocks(spec);
  let loaded: WeightTensor | null = null;
  const taken = new Set<number>();
  return parts.map(({ name, shape }, p) => [
    name,
    {
      shape,
      problem: entry.problem,
      load(): WeightTensor {
        const fused = (loaded ??= entry.load());
        const data = new Float32Array(shape[0] * columns);
        let row = 0;
        for (const [start, count] of blocks[p]) {
          data.set(fused.data.subarray(start * columns, (start + count) * columns), row * columns);
          row += count;
        }
        taken.add(p);
        if (taken.size === parts.length) {
          loaded = null;
          taken.clear();
        }
        return { shape, data };
      },
    },
  ]);
}

/** [first row, row count] of each part when the parts are stacked one after another. */
function concatenatedBlocks(sizes: readonly number[]): [number, number][][] {
  let start = 0;
  return sizes.map((size) => {
    const block: [number, number] = [start, size];
    start += size;
    return [block];
  });
}

/** [first row, row count] blocks of queries, keys and values in Falcon's per-KV-head groups. */
function kvGroupBlocks(spec: DecoderSpec): [number, number][][] {
  const { num_heads, num_kv_heads, head_dim } = spec;
  const queriesPerGroup = num_heads / num_kv_heads;
  const groupRows = (queriesPerGroup + 2) * head_dim;
  const query: [number, number][] = [];
  const key: [number, number][] = [];
  const value: [number, number][] = [];
  for (let g = 0; g < num_kv_heads; g++) {
    query.push([g * groupRows, queriesPerGroup * head_dim]);
    key.push([g * groupRows + queriesPerGroup * head_dim, head_dim]);
    value.push([g * groupRows + (queriesPerGroup + 1) * head_dim, head_dim]);
  }
  return [query, key, value];
}

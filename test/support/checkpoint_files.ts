/**
 * Checkpoint files written byte by byte, for tests of the readers: GGUF and safetensors containers, and a
 * tiny Llama model in each format (random weights, a small SentencePiece-style vocabulary) that the
 * converter accepts as it is, so a test can break exactly one thing in it.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { WeightTensor } from "../../src/architecture/decoder_spec.js";
import type { GgufValue } from "../../src/convert/gguf.js";
import { randomDecoderWeights } from "./fixtures/random_weights.js";
import { tinyDecoderSpec, tinyModelConfig } from "./fixtures/tiny_models.js";
import { writeTinyTokenizer } from "./fixtures/tiny_tokenizer.js";

/** Little-endian bytes, appended. */
export class ByteWriter {
  private readonly parts: Uint8Array[] = [];
  length = 0;

  bytes(bytes: Uint8Array): this {
    this.parts.push(bytes.slice());
    this.length += bytes.length;
    return this;
  }

  private scalar(size: number, write: (view: DataView) => void): this {
    const bytes = new Uint8Array(size);
    write(new DataView(bytes.buffer));
    return this.bytes(bytes);
  }

  u8 = (value: number) => this.scalar(1, (v) => v.setUint8(0, value));
  i32 = (value: number) => this.scalar(4, (v) => v.setInt32(0, value, true));
  u32 = (value: number) => this.scalar(4, (v) => v.setUint32(0, value, true));
  u64 = (value: number) => this.scalar(8, (v) => v.setBigUint64(0, BigInt(value), true));
  f32 = (value: number) => this.scalar(4, (v) => v.setFloat32(0, value, true));

  padTo(multiple: number): this {
    return this.bytes(new Uint8Array((multiple - (this.length % multiple)) % multiple));
  }

  /** A plain Uint8Array of its own (not a Buffer, whose `slice` would share memory). */
  finish(): Uint8Array {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const part of this.parts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }
}

export const floatBytes = (values: Float32Array) => new Uint8Array(values.buffer, values.byteOffset, values.byteLength);

/** ggml type ids. */
export const GGML = { F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q8_0: 8, BF16: 30 } as const;

export interface GgufTensorData {
  name: string;
  dims: number[];
  type: number;
  data: Uint8Array;
}

export interface GgufWriteOptions {
  alignment?: number;
  /** Data offsets to write instead of the ones the layout gives (the data is laid out as usual). */
  offsets?: number[];
}

/**
 * A GGUF file. Metadata value types follow the JavaScript values: integers as u32 (u64 from 2^32, i32 when
 * negative), other numbers as f32.
 */
export function writeGguf(version: 2 | 3, metadata: Map<string, GgufValue>, tensors: GgufTensorData[], options: GgufWriteOptions = {}): Uint8Array {
  const alignment = options.alignment ?? 32;
  const writer = new ByteWriter().u32(0x46554747).u32(version).u64(tensors.length).u64(metadata.size);
  const string = (text: string) => {
    const bytes = new TextEncoder().encode(text);
    writer.u64(bytes.length).bytes(bytes);
  };
  const typeOf = (value: GgufValue): number => {
    if (typeof value === "string") return 8;
    if (typeof value === "boolean") return 7;
    if (Array.isArray(value)) return 9;
    if (!Number.isInteger(value)) return 6;
    return (value as number) < 0 ? 5 : (value as number) > 0xffffffff ? 10 : 4;
  };
  const write = (type: number, value: GgufValue): void => {
    if (type === 8) string(value as string);
    else if (type === 7) writer.u8(value ? 1 : 0);
    else if (type === 4) writer.u32(value as number);
    else if (type === 5) writer.i32(value as number);
    else if (type === 6) writer.f32(value as number);
    else if (type === 10) writer.u64(value as number);
    else {
      const items = value as GgufValue[];
      const types = new Set(items.map(typeOf));
      const elementType = types.has(8) ? 8 : types.has(6) ? 6 : types.has(5) ? 5 : 4;
      writer.u32(elementType).u64(items.length);
      for (const item of items) write(elementType, item);
    }
  };
  for (const [key, value] of metadata) {
    string(key);
    writer.u32(typeOf(value));
    write(typeOf(value), value);
  }
  let offset = 0;
  tensors.forEach((tensor, i) => {
    string(tensor.name);
    writer.u32(tensor.dims.length);
    for (const size of tensor.dims) writer.u64(size);
    writer.u32(tensor.type).u64(options.offsets?.[i] ?? offset);
    offset += Math.ceil(tensor.data.length / alignment) * alignment;
  });
  writer.padTo(alignment);
  for (const tensor of tensors) writer.bytes(tensor.data).padTo(alignment);
  return writer.finish();
}

/** A safetensors file of `tensors` stored as `dtype` (BF16 truncates), in the order given. */
export function safetensorsFile(tensors: readonly (readonly [string, WeightTensor])[], dtype: "F32" | "BF16" | "I32" = "F32"): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  const data: Uint8Array[] = [];
  let offset = 0;
  for (const [name, tensor] of tensors) {
    const bytes =
      dtype === "BF16"
        ? new Uint8Array(Uint16Array.from(new Uint32Array(tensor.data.slice().buffer), (bits) => bits >>> 16).buffer)
        : floatBytes(tensor.data.slice());
    header[name] = { dtype, shape: tensor.shape, data_offsets: [offset, offset + bytes.length] };
    data.push(bytes);
    offset += bytes.length;
  }
  return safetensorsWithHeader(JSON.stringify(header), Buffer.concat(data));
}

/** A safetensors file from its header's JSON text (padded to 8 bytes, as writers do) and its data section. */
export function safetensorsWithHeader(headerJson: string, data: Uint8Array): Uint8Array {
  const json = new TextEncoder().encode(headerJson.padEnd(Math.ceil(headerJson.length / 8) * 8));
  return new ByteWriter().u64(json.length).bytes(json).bytes(data).finish();
}

/** The tiny Llama fixture's spec and weights, by Hugging Face name, in a fixed order. */
export function tinyLlama(seed = 1) {
  const spec = tinyDecoderSpec("llama");
  return { spec, weights: [...randomDecoderWeights(spec, seed)] };
}

/** ggml names of the Hugging Face Llama weights. */
function ggmlName(name: string): string {
  const layer = /^model\.layers\.(\d+)\.(.+)\.weight$/.exec(name);
  if (!layer) return { "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight" }[name]!;
  const suffixes: Record<string, string> = {
    input_layernorm: "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", post_attention_layernorm: "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.down_proj": "ffn_down",
    "mlp.up_proj": "ffn_up",
  };
  return `blk.${layer[1]}.${suffixes[layer[2]]}.weight`;
}

/**
 * The tiny Llama fixture as a GGUF file llama.cpp would write (all f32), after `edit` changes its metadata or
 * its weights (by Hugging Face name). Query and key rows are not permuted: the values do not matter here.
 */
export function tinyLlamaGguf(
  edit: { metadata?: (metadata: Map<string, GgufValue>) => void; weights?: (weights: Map<string, WeightTensor>) => void } = {},
  options: GgufWriteOptions = {},
): Uint8Array {
  const { spec, weights } = tinyLlama();
  const byName = new Map(weights);
  edit.weights?.(byName);
  const pieces = ["<unk>", "<s>", "</s>", ...Array.from({ length: spec.vocab_size - 3 }, (_, i) => `\u2581p${i}`)];
  const metadata = new Map<string, GgufValue>([
    ["general.architecture", "llama"],
    ["llama.context_length", 64],
    ["llama.embedding_length", spec.hidden_size],
    ["llama.block_count", spec.num_layers],
    ["llama.feed_forward_length", spec.intermediate_size],
    ["llama.attention.head_count", spec.num_heads],
    ["llama.attention.head_count_kv", spec.num_kv_heads],
    ["llama.attention.layer_norm_rms_epsilon", 1e-5],
    ["llama.rope.freq_base", 10000],
    ["tokenizer.ggml.model", "llama"],
    ["tokenizer.ggml.tokens", pieces],
    ["tokenizer.ggml.scores", pieces.map((_, id) => -id - 0.5)],
    ["tokenizer.ggml.token_type", pieces.map((_, id) => (id === 0 ? 2 : id < 3 ? 3 : 1))],
  ]);
  edit.metadata?.(metadata);
  const tensors = [...byName].map(([name, tensor]) => ({
    name: ggmlName(name),
    dims: [...tensor.shape].reverse(),
    type: GGML.F32,
    data: floatBytes(tensor.data),
  }));
  return writeGguf(3, metadata, tensors, options);
}

/**
 * The tiny Llama fixture as a Hugging Face directory (config.json, tokenizer files, model.safetensors) in
 * `dir`, after `edit` changes its config or weights.
 */
export async function writeTinyLlamaDirectory(
  dir: string,
  edit: { config?: (config: Record<string, unknown>) => void; weights?: (weights: Map<string, WeightTensor>) => void } = {},
): Promise<string> {
  const { spec, weights } = tinyLlama();
  const byName = new Map(weights);
  edit.weights?.(byName);
  const config = tinyModelConfig("llama", spec);
  await mkdir(dir, { recursive: true });
  // The tokenizer is sized from the intact config.
  await writeFile(join(dir, "config.json"), JSON.stringify(config, null, 2));
  await writeTinyTokenizer(dir);
  edit.config?.(config);
  await writeFile(join(dir, "config.json"), JSON.stringify(config, null, 2));
  await writeFile(join(dir, "model.safetensors"), safetensorsFile([...byName]));
  return dir;
}

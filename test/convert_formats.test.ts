/**
 * The readers beyond the three shared files: llama2.c version 1 and 2 exports, GGUF versions 2 and 3 with
 * f16 / bf16 / Q8_0 / Q4_0 tensors, sharded bf16 safetensors — each written here from the shared weights
 * and read back against independently computed values. Also the RoPE permutation's exactness, the
 * tokenizer.json against llama2.c's encoding algorithm on real text, and clean refusals of what is
 * unsupported.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AutoModelForCausalLM, AutoTokenizer, env, Tensor } from "@huggingface/transformers";
import type { WeightTensor } from "../src/architecture/decoder_spec.js";
import { BoundedReader, memorySource, openFileSource } from "../src/convert/bounded_reader.js";
import type { TensorEntry } from "../src/convert/checkpoint.js";
import { convertCheckpoint } from "../src/convert/convert.js";
import { ConversionError } from "../src/convert/errors.js";
import { readGguf, readGgufTensor, type GgufValue } from "../src/convert/gguf.js";
import { readGgufCheckpoint } from "../src/convert/gguf_llama.js";
import { readLlama2cCheckpoint } from "../src/convert/llama2c.js";
import { readLlama2cTokenizer } from "../src/convert/llama2c_tokenizer.js";
import { interleavedToRotateHalf } from "../src/convert/rope_permutation.js";
import { readSafetensors } from "../src/convert/safetensors.js";
import { sentencePieceTokenizerFiles } from "../src/convert/sentencepiece_tokenizer.js";
import { float32ToFloat16Bits } from "../src/onnx/float16.js";
import { KeyRotation, ropeInverseFrequencies, type RopeSpec } from "../src/positions/rope.js";
import { safetensorsFile } from "./support/safetensors_file.js";
import { sharedFiles, sharedReference } from "./support/shared_data.js";

env.allowRemoteModels = false;

const STORIES_BIN = "models/stories260K/stories260K.bin";
const STORIES_TOKENIZER = "models/stories260K/tok512.bin";
const STORIES_GGUF = "models/stories260K/stories260K.v1.gguf";
const TINYSTORIES_DIR = "models/tinystories-656k";

const work = mkdtempSync(join(tmpdir(), "attention-sinks-formats-"));
after(() => rmSync(work, { recursive: true, force: true }));

/** Reads every tensor of a checkpoint's weights. */
const loadAll = (tensors: ReadonlyMap<string, TensorEntry>) => new Map([...tensors].map(([name, entry]) => [name, entry.load()]));

function assertSameTensors(actual: Map<string, WeightTensor>, expected: Map<string, WeightTensor>): void {
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort());
  for (const [name, tensor] of expected) {
    assert.deepEqual(actual.get(name)!.shape, tensor.shape, name);
    assert.ok(Buffer.from(actual.get(name)!.data.buffer).equals(Buffer.from(tensor.data.buffer)), `${name} differs`);
  }
}

/** Little-endian bytes, appended. */
class ByteWriter {
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

  finish(): Uint8Array {
    return Buffer.concat(this.parts);
  }
}

const floatBytes = (values: Float32Array) => new Uint8Array(values.buffer, values.byteOffset, values.byteLength);

/** The value of an f16 bit pattern, computed here independently of the code under test. */
function halfValue(bits: number): number {
  const exponent = (bits >> 10) & 31;
  const magnitude = exponent === 0 ? (bits & 1023) * 2 ** -24 : (1 + (bits & 1023) / 1024) * 2 ** (exponent - 15);
  return bits & 0x8000 ? -magnitude : magnitude;
}

describe("llama2.c exports", () => {
  /** The legacy file's tensors by llama2.c name, in its order, plus its header. */
  function legacySections(bytes: Uint8Array) {
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    const [dim, hidden, layers, heads, kvHeads, vocab, seqLen] = Array.from({ length: 7 }, (_, i) => view.getInt32(4 * i, true));
    const kvDim = (dim / heads) * kvHeads;
    const sizes: [string, number, number][] = [
      ["embed", 1, vocab * dim],
      ["att_norm", layers, dim],
      ["wq", layers, dim * dim],
      ["wk", layers, kvDim * dim],
      ["wv", layers, kvDim * dim],
      ["wo", layers, dim * dim],
      ["ffn_norm", layers, dim],
      ["w1", layers, hidden * dim],
      ["w2", layers, dim * hidden],
      ["w3", layers, hidden * dim],
      ["final_norm", 1, dim],
    ];
    const floats = new Float32Array(bytes.buffer.slice(bytes.byteOffset + 28, bytes.byteOffset + bytes.length));
    const sections = new Map<string, Float32Array[]>();
    let at = 0;
    for (const [name, count, size] of sizes) {
      sections.set(name, Array.from({ length: count }, (_, i) => floats.subarray(at + i * size, at + (i + 1) * size)));
      at += count * size;
    }
    return { header: [dim, hidden, layers, heads, kvHeads, vocab, seqLen], sections };
  }

  function versionedHeader(version: 1 | 2, header: number[], groupSize = 0): ByteWriter {
    const writer = new ByteWriter().u32(0x616b3432).i32(version);
    for (const value of header) writer.i32(value);
    writer.u8(1); // shared classifier
    if (version === 2) writer.i32(groupSize);
    return writer.padTo(256);
  }

  const NORMS = ["att_norm", "ffn_norm", "final_norm"];
  const MATRICES = ["embed", "wq", "wk", "wv", "wo", "w1", "w2", "w3"];

  test("version 1 reads exactly the legacy file's tensors", (t) => {
    const files = sharedFiles(t, STORIES_BIN, STORIES_TOKENIZER);
    if (!files) return;
    const [legacy, tokenizer] = files.map((path) => new Uint8Array(readFileSync(path)));
    const { header, sections } = legacySections(legacy);
    const writer = versionedHeader(1, header);
    for (const name of [...NORMS, ...MATRICES]) for (const tensor of sections.get(name)!) writer.bytes(floatBytes(tensor));
    const open = (bytes: Uint8Array) => readLlama2cCheckpoint(memorySource("model.bin", bytes), () => memorySource("tok512.bin", tokenizer));
    assertSameTensors(loadAll(open(writer.finish()).tensors), loadAll(open(legacy).tensors));
  });

  test("version 2 dequantizes Q8_0 groups as int8 value times group scale", (t) => {
    const files = sharedFiles(t, STORIES_BIN, STORIES_TOKENIZER);
    if (!files) return;
    const [legacy, tokenizer] = files.map((path) => new Uint8Array(readFileSync(path)));
    const { header, sections } = legacySections(legacy);
    const groupSize = 32;
    const writer = versionedHeader(2, header, groupSize);
    for (const name of NORMS) for (const tensor of sections.get(name)!) writer.bytes(floatBytes(tensor));
    const expectedV = new Map<number, Float32Array>();
    for (const name of MATRICES) {
      sections.get(name)!.forEach((tensor, layer) => {
        const values = new Int8Array(tensor.length);
        const scales = new Float32Array(tensor.length / groupSize);
        const dequantized = new Float32Array(tensor.length);
        for (let g = 0; g < scales.length; g++) {
          const group = tensor.subarray(g * groupSize, (g + 1) * groupSize);
          scales[g] = group.reduce((m, x) => Math.max(m, Math.abs(x)), 0) / 127;
          group.forEach((x, j) => {
            values[g * groupSize + j] = scales[g] === 0 ? 0 : Math.round(x / scales[g]);
            dequantized[g * groupSize + j] = values[g * groupSize + j] * scales[g];
          });
        }
        writer.bytes(new Uint8Array(values.buffer)).bytes(floatBytes(scales));
        if (name === "wv") expectedV.set(layer, dequantized);
      });
    }
    const checkpoint = readLlama2cCheckpoint(memorySource("model.bin", writer.finish()), () => memorySource("tok512.bin", tokenizer));
    const loaded = loadAll(checkpoint.tensors);
    for (const [layer, expected] of expectedV) {
      assert.deepEqual(loaded.get(`model.layers.${layer}.self_attn.v_proj.weight`)!.data, expected);
    }
    // Every weight stays within half a quantization step of the fp32 original.
    const original = loadAll(readLlama2cCheckpoint(memorySource("legacy.bin", legacy), () => memorySource("tok512.bin", tokenizer)).tensors);
    for (const [name, tensor] of original) {
      const step = tensor.data.reduce((m, x) => Math.max(m, Math.abs(x)), 0) / 127;
      const worst = tensor.data.reduce((m, x, i) => Math.max(m, Math.abs(x - loaded.get(name)!.data[i])), 0);
      assert.ok(worst <= step / 2 + 1e-7, `${name}: off by ${worst}`);
    }
  });

  test("a tokenizer of the wrong size and an unknown version are named errors", (t) => {
    const files = sharedFiles(t, STORIES_BIN, STORIES_TOKENIZER);
    if (!files) return;
    const [legacy, tokenizer] = files.map((path) => new Uint8Array(readFileSync(path)));
    assert.throws(
      () => readLlama2cTokenizer(memorySource("tok512.bin", tokenizer), 256, 512),
      /tok512\.bin: has \d+ bytes after the model's 256 tokens/,
    );
    const v3 = legacy.slice();
    new DataView(v3.buffer).setUint32(0, 0x616b3432, true);
    new DataView(v3.buffer).setInt32(4, 3, true);
    assert.throws(
      () => readLlama2cCheckpoint(memorySource("v3.bin", v3), () => memorySource("tok512.bin", tokenizer)),
      (error: Error) => error instanceof ConversionError && /v3\.bin: llama2\.c export version 3 is not supported/.test(error.message),
    );
  });
});

describe("GGUF", () => {
  const GGML = { F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q8_0: 8, BF16: 30 } as const;

  interface GgufTensorData {
    name: string;
    dims: number[];
    type: number;
    data: Uint8Array;
  }

  /** A GGUF file. Metadata value types follow the JavaScript values (integers as u32 / i32, others f32). */
  function writeGguf(version: 2 | 3, metadata: Map<string, GgufValue>, tensors: GgufTensorData[], alignment = 32): Uint8Array {
    const writer = new ByteWriter().u32(0x46554747).u32(version).u64(tensors.length).u64(metadata.size);
    const string = (text: string) => {
      const bytes = new TextEncoder().encode(text);
      writer.u64(bytes.length).bytes(bytes);
    };
    const typeOf = (value: GgufValue): number => {
      if (typeof value === "string") return 8;
      if (typeof value === "boolean") return 7;
      if (Array.isArray(value)) return 9;
      return Number.isInteger(value) ? ((value as number) < 0 ? 5 : 4) : 6;
    };
    const write = (type: number, value: GgufValue): void => {
      if (type === 8) string(value as string);
      else if (type === 7) writer.u8(value ? 1 : 0);
      else if (type === 4) writer.u32(value as number);
      else if (type === 5) writer.i32(value as number);
      else if (type === 6) writer.f32(value as number);
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
    for (const tensor of tensors) {
      string(tensor.name);
      writer.u32(tensor.dims.length);
      for (const size of tensor.dims) writer.u64(size);
      writer.u32(tensor.type).u64(offset);
      offset += Math.ceil(tensor.data.length / alignment) * alignment;
    }
    writer.padTo(alignment);
    for (const tensor of tensors) writer.bytes(tensor.data).padTo(alignment);
    return writer.finish();
  }

  /** Bytes of `values` stored as `type`, and the float values a correct reader must get back. */
  function encode(type: number, values: Float32Array): { data: Uint8Array; decoded: Float32Array } {
    const decoded = new Float32Array(values.length);
    if (type === GGML.F32) return { data: floatBytes(values.slice()), decoded: values.slice() };
    if (type === GGML.F16 || type === GGML.BF16) {
      const bits = new Uint16Array(values.length);
      const float = new Float32Array(1);
      const floatBits = new Uint32Array(float.buffer);
      values.forEach((x, i) => {
        float[0] = x;
        bits[i] = type === GGML.F16 ? float32ToFloat16Bits(x) : floatBits[0] >>> 16; // bf16: truncate
        decoded[i] = type === GGML.F16 ? halfValue(bits[i]) : ((floatBits[0] = bits[i] << 16), float[0]);
      });
      return { data: new Uint8Array(bits.buffer), decoded };
    }
    const q4 = type === GGML.Q4_0;
    const blockBytes = q4 ? 18 : 34;
    const data = new Uint8Array((values.length / 32) * blockBytes);
    const view = new DataView(data.buffer);
    for (let b = 0; b < values.length / 32; b++) {
      const block = values.subarray(b * 32, b * 32 + 32);
      // Q8_0: d = max|x| / 127. Q4_0 (as llama.cpp): d = (the value of largest magnitude) / -8.
      const extreme = block.reduce((m, x) => (Math.abs(x) > Math.abs(m) ? x : m), 0);
      const d = q4 ? extreme / -8 : Math.abs(extreme) / 127;
      const dBits = float32ToFloat16Bits(d);
      view.setUint16(b * blockBytes, dBits, true);
      const scale = halfValue(dBits);
      const inverse = d === 0 ? 0 : 1 / d;
      for (let j = 0; j < 32; j++) {
        if (q4) {
          const q = Math.min(15, Math.trunc(block[j] * inverse + 8.5));
          data[b * 18 + 2 + (j % 16)] |= j < 16 ? q : q << 4;
          decoded[b * 32 + j] = (q - 8) * scale;
        } else {
          const q = Math.round(block[j] * inverse) | 0; // int8 has no -0
          view.setInt8(b * 34 + 2 + j, q);
          decoded[b * 32 + j] = q * scale;
        }
      }
    }
    return { data, decoded };
  }

  /** The shared GGUF's metadata and its tensors as f32 values in ggml order. */
  function sharedGguf(path: string) {
    const source = openFileSource(path);
    try {
      const reader = new BoundedReader(source);
      const file = readGguf(reader);
      const tensors = file.tensors.map((info) => ({ name: info.name, dims: info.dims, values: readGgufTensor(reader, info) }));
      return { metadata: file.metadata, tensors };
    } finally {
      source.close();
    }
  }

  /** The shared model re-encoded: matrices whose rows are whole 32-value blocks as `type`, the rest f32. */
  function reencode(path: string, type: number, version: 2 | 3 = 3, alignment = 32) {
    const { metadata, tensors } = sharedGguf(path);
    const stored: GgufTensorData[] = [];
    const expected: GgufTensorData[] = [];
    for (const { name, dims, values } of tensors) {
      const storedType = dims.length === 2 && dims[0] % 32 === 0 ? type : GGML.F32;
      const { data, decoded } = encode(storedType, values);
      stored.push({ name, dims, type: storedType, data });
      expected.push({ name, dims, type: GGML.F32, data: floatBytes(decoded) });
    }
    const meta = new Map(metadata);
    if (alignment !== 32) meta.set("general.alignment", alignment);
    return { stored: writeGguf(version, meta, stored, alignment), expected: writeGguf(version, meta, expected, alignment), metadata };
  }

  const read = (bytes: Uint8Array, name = "model.gguf") => readGgufCheckpoint(memorySource(name, bytes));

  test("versions 2 and 3 (and a 64-byte alignment) read exactly what version 1 holds", (t) => {
    const files = sharedFiles(t, STORIES_GGUF);
    if (!files) return;
    const original = read(readFileSync(files[0]));
    for (const [version, alignment] of [[2, 32], [3, 64]] as const) {
      const converted = read(reencode(files[0], GGML.F32, version, alignment).stored);
      assertSameTensors(loadAll(converted.tensors), loadAll(original.tensors));
      assert.deepEqual(converted.files, original.files);
    }
  });

  for (const type of ["F16", "BF16", "Q8_0", "Q4_0"] as const) {
    test(`${type} tensors are widened or dequantized exactly`, (t) => {
      const files = sharedFiles(t, STORIES_GGUF);
      if (!files) return;
      const { stored, expected } = reencode(files[0], GGML[type]);
      const actual = loadAll(read(stored).tensors);
      assertSameTensors(actual, loadAll(read(expected).tensors));
      // The encoding really changed the values, and only by its rounding.
      const exact = loadAll(read(readFileSync(files[0])).tensors).get("model.layers.0.mlp.up_proj.weight")!.data;
      const rounded = actual.get("model.layers.0.mlp.up_proj.weight")!.data;
      const worst = exact.reduce((m, x, i) => Math.max(m, Math.abs(x - rounded[i])), 0);
      assert.ok(worst > 0 && worst < 0.1, `${type}: largest change ${worst}`);
    });
  }

  test("unsupported quantizations, architectures and tokenizers are refused by name", (t) => {
    const files = sharedFiles(t, STORIES_GGUF);
    if (!files) return;
    const { metadata, tensors } = sharedGguf(files[0]);
    const build = (edit: (meta: Map<string, GgufValue>) => void, q4_1 = false) => {
      const meta = new Map(metadata);
      edit(meta);
      return writeGguf(
        3,
        meta,
        tensors.map(({ name, dims, values }) =>
          q4_1 && name === "token_embd.weight"
            ? { name, dims, type: GGML.Q4_1, data: new Uint8Array((values.length / 32) * 20) }
            : { name, dims, type: GGML.F32, data: floatBytes(values) },
        ),
      );
    };
    const refused = (bytes: Uint8Array, pattern: RegExp) =>
      assert.throws(() => read(bytes, "bad.gguf"), (error: Error) => error instanceof ConversionError && pattern.test(error.message));
    refused(build(() => {}, true), /^bad\.gguf: the weight model\.embed_tokens\.weight: Q4_1 tensors cannot be converted \(supported: .*Q8_0/);
    refused(build((meta) => meta.set("general.architecture", "qwen2")), /architecture "qwen2" is not supported/);
    refused(build((meta) => meta.set("tokenizer.ggml.model", "gpt2")), /tokenizer model "gpt2" is not supported/);
    refused(build((meta) => meta.delete("llama.block_count")), /metadata llama\.block_count is missing/);
  });
});

describe("Hugging Face directories", () => {
  /** A model directory with the shared model's configuration and tokenizer and the given weight files. */
  function modelDirectory(name: string, sharedDir: string, weightFiles: Record<string, Uint8Array | string>): string {
    const dir = join(work, name);
    mkdirSync(dir);
    for (const file of ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
      symlinkSync(join(sharedDir, file), join(dir, file));
    }
    for (const [file, content] of Object.entries(weightFiles)) writeFileSync(join(dir, file), content);
    return dir;
  }

  function sharedWeights(sharedDir: string): [string, WeightTensor][] {
    const source = openFileSource(join(sharedDir, "model.safetensors"));
    try {
      return [...loadAll(readSafetensors(new BoundedReader(source)))].sort(([a], [b]) => a.localeCompare(b));
    } finally {
      source.close();
    }
  }

  test("sharded bf16 safetensors convert losslessly and reproduce the greedy reference", async (t) => {
    const files = sharedFiles(t, TINYSTORIES_DIR);
    const reference = sharedReference(t)?.["tinystories-656k"];
    if (!files || !reference) return;
    const weights = sharedWeights(files[0]);
    const half = Math.ceil(weights.length / 2);
    const shards = [weights.slice(0, half), weights.slice(half)];
    const shardNames = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    const weightMap = Object.fromEntries(shards.flatMap((shard, i) => shard.map(([name]) => [name, shardNames[i]])));
    const dir = modelDirectory("sharded", files[0], {
      [shardNames[0]]: safetensorsFile(shards[0], "BF16"),
      [shardNames[1]]: safetensorsFile(shards[1], "BF16"),
      "model.safetensors.index.json": JSON.stringify({ metadata: {}, weight_map: weightMap }),
    });
    const out = join(work, "sharded-out");
    await convertCheckpoint(dir, out);
    const model = await AutoModelForCausalLM.from_pretrained(out, { local_files_only: true });
    const output = (await model.generate({
      inputs: new Tensor("int64", BigInt64Array.from([1n]), [1, 1]),
      max_new_tokens: 512,
      do_sample: false,
    })) as Tensor;
    assert.deepEqual(Array.from(output.data as BigInt64Array, Number).slice(1), reference.greedy_from_BOS_ids);
  });

  test("unconvertible dtypes and shard names outside the directory are refused by name", async (t) => {
    const files = sharedFiles(t, TINYSTORIES_DIR);
    if (!files) return;
    const weights = sharedWeights(files[0]);
    const intDir = modelDirectory("int32", files[0], { "model.safetensors": safetensorsFile(weights, "I32") });
    await assert.rejects(convertCheckpoint(intDir, join(work, "int32-out")), /int32: the weight .*: dtype I32 cannot be converted/);
    const escapeDir = modelDirectory("escape", files[0], {
      "model.safetensors.index.json": JSON.stringify({ weight_map: { "lm_head.weight": "../model.safetensors" } }),
    });
    await assert.rejects(
      convertCheckpoint(escapeDir, join(work, "escape-out")),
      /model\.safetensors\.index\.json: names the shard "\.\.\/model\.safetensors"/,
    );
  });
});

test("permuting Meta-layout query and key rows into rotate_half leaves every attention score unchanged", () => {
  const heads = 2;
  const headDim = 8;
  const columns = 5;
  let seed = 7;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1;
  const matrix = (): WeightTensor => ({ shape: [heads * headDim, columns], data: Float32Array.from({ length: heads * headDim * columns }, random) });
  const x = Float32Array.from({ length: columns }, random);
  const project = (w: WeightTensor) =>
    Float32Array.from({ length: w.shape[0] }, (_, r) => x.reduce((sum, xi, c) => sum + w.data[r * columns + c] * xi, 0));
  const rope = (layout: RopeSpec["layout"]): RopeSpec => ({ layout, head_dim: headDim, rotary_dim: headDim, theta: 10000 });
  const scores = (q: Float32Array, k: Float32Array, layout: RopeSpec["layout"]) => {
    const spec = rope(layout);
    const frequencies = ropeInverseFrequencies(spec);
    // The query at position 9 against the key at position 4.
    new KeyRotation(spec, frequencies, 9).apply(q, 0, q, 0, heads);
    new KeyRotation(spec, frequencies, 4).apply(k, 0, k, 0, heads);
    return Array.from({ length: heads }, (_, h) => q.subarray(h * headDim, (h + 1) * headDim).reduce((s, v, i) => s + v * k[h * headDim + i], 0));
  };
  const wq = matrix();
  const wk = matrix();
  const meta = scores(project(wq), project(wk), "interleaved");
  const permuted = scores(project(interleavedToRotateHalf(wq, headDim)), project(interleavedToRotateHalf(wk, headDim)), "rotate_half");
  meta.forEach((score, h) => assert.ok(Math.abs(score - permuted[h]) < 1e-5, `head ${h}: ${score} vs ${permuted[h]}`));
});

test("the llama2.c tokenizer.json encodes real text exactly as llama2.c's algorithm does", async (t) => {
  const files = sharedFiles(t, STORIES_TOKENIZER, "data/tinystories_valid.txt", "data/tinyshakespeare.txt");
  if (!files) return;
  const source = openFileSource(files[0]);
  const vocab = readLlama2cTokenizer(source, 512, 512);
  source.close();
  const dir = join(work, "tokenizer");
  mkdirSync(dir);
  for (const [name, text] of Object.entries(sentencePieceTokenizerFiles(vocab, files[0]))) writeFileSync(join(dir, name), text);
  const tokenizer = await AutoTokenizer.from_pretrained(dir, { local_files_only: true });

  // llama2.c's encode(): a dummy-prefix space, code points (unknown ones as byte tokens), then merge the
  // adjacent pair whose concatenation scores highest, leftmost first, until none is in the vocabulary.
  const ids = new Map(vocab.pieces.map((piece, id) => [piece.text, id]));
  const llama2cEncode = (text: string): number[] => {
    const tokens: number[] = [1];
    if (text.length > 0) tokens.push(ids.get("\u2581")!);
    for (const char of text.replaceAll(" ", "\u2581")) {
      const id = ids.get(char);
      if (id !== undefined) tokens.push(id);
      else for (const byte of new TextEncoder().encode(char)) tokens.push(byte + 3);
    }
    for (;;) {
      let best = -Infinity;
      let at = -1;
      for (let i = 0; i + 1 < tokens.length; i++) {
        const merged = ids.get(vocab.pieces[tokens[i]].text + vocab.pieces[tokens[i + 1]].text);
        if (merged !== undefined && vocab.pieces[merged].score > best) [best, at] = [vocab.pieces[merged].score, i];
      }
      if (at < 0) return tokens;
      tokens.splice(at, 2, ids.get(vocab.pieces[tokens[at]].text + vocab.pieces[tokens[at + 1]].text)!);
    }
  };

  const stories = readFileSync(files[1], "utf8").split("\n\n").slice(0, 150);
  const shakespeare = readFileSync(files[2], "utf8").split("\n\n").slice(0, 150);
  const unusual = ["", " ", "  two  spaces ", "naïve café — ½ ☃ 😀 日本語", "tab\there\r\nand\u0001control"];
  for (const text of [...stories, ...shakespeare, ...unusual]) {
    assert.deepEqual(tokenizer.encode(text), llama2cEncode(text), JSON.stringify(text.slice(0, 80)));
  }
});

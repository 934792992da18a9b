/**
 * Checkpoints are untrusted input. This fuzzer mutates the real shared files (seeded, so every failure
 * reproduces) — random bytes, header fields set to edge values, truncation, garbage appended, and
 * format-aware edits of safetensors JSON and GGUF fields — then opens each result and reads every tensor.
 * Every case must either succeed or fail with a ConversionError, quickly and without a large allocation.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { memorySource } from "../src/convert/bounded_reader.js";
import type { TensorEntry } from "../src/convert/checkpoint.js";
import { ConversionError } from "../src/convert/errors.js";
import { readGgufCheckpoint } from "../src/convert/gguf_llama.js";
import { huggingFaceWeights } from "../src/convert/hf_directory.js";
import { decoderSpecFromHfConfig } from "../src/convert/hf_families.js";
import { readLlama2cCheckpoint } from "../src/convert/llama2c.js";
import { readLlama2cTokenizer } from "../src/convert/llama2c_tokenizer.js";
import { sentencePieceTokenizerFiles } from "../src/convert/sentencepiece_tokenizer.js";
import { sharedFiles } from "./support/shared_data.js";

const CASES_PER_FORMAT = 1000;
const SEED = 20240611;
/**
 * CPU time, not wall time: a loaded machine delays a case without the case using more CPU. A real case takes a
 * few milliseconds; only a runaway loop over a header-claimed size gets near this.
 */
const MAX_CASE_CPU_MS = 5_000;
/** RSS moves with the allocator and the GC's timing, so the bound is far above that noise: only a header-claimed huge allocation crosses it. */
const MAX_RSS_GROWTH_BYTES = 1 << 30;

/** mulberry32: a small seeded generator, so a failing case number reproduces exactly. */
class Random {
  constructor(private state: number) {}

  next(): number {
    this.state = (this.state + 0x6d2b79f5) | 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  int(below: number): number {
    return Math.floor(this.next() * below);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
}

const EDGE_VALUES_32 = [0, 1, 2, 3, 4, 7, 8, 31, 32, 33, 64, 255, 256, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff];
const EDGE_VALUES_64 = [0n, 1n, 2n ** 31n, 2n ** 32n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n];

/** A header field: where it is and how wide. */
interface Field {
  offset: number;
  bytes: 4 | 8;
}

interface Mutation {
  bytes: Uint8Array;
  description: string;
}

/** Generic mutations of `base`, biased to the first `headerBytes` bytes and to the given `fields`. */
function mutate(random: Random, base: Uint8Array, headerBytes: number, fields: readonly Field[]): Mutation {
  const bytes = base.slice();
  const kind = random.int(6);
  if (kind === 0) {
    const count = 1 + random.int(4);
    const at: number[] = [];
    for (let i = 0; i < count; i++) {
      const offset = random.int(headerBytes);
      bytes[offset] = random.int(256);
      at.push(offset);
    }
    return { bytes, description: `header bytes changed at ${at.join(", ")}` };
  }
  if (kind === 1 && fields.length > 0) {
    const field = random.pick(fields);
    const view = new DataView(bytes.buffer);
    if (field.bytes === 4) {
      const value = random.int(4) === 0 ? random.int(2 ** 32) : random.pick(EDGE_VALUES_32);
      view.setUint32(field.offset, value, true);
      return { bytes, description: `u32 field at ${field.offset} set to ${value}` };
    }
    const value = random.pick(EDGE_VALUES_64);
    view.setBigUint64(field.offset, value, true);
    return { bytes, description: `u64 field at ${field.offset} set to ${value}` };
  }
  if (kind === 2) {
    const length = random.int(2) === 0 ? random.int(headerBytes) : random.int(base.length);
    return { bytes: bytes.subarray(0, length), description: `truncated to ${length} bytes` };
  }
  if (kind === 3) {
    const extra = Uint8Array.from({ length: 1 + random.int(64) }, () => random.int(256));
    const longer = new Uint8Array(base.length + extra.length);
    longer.set(base);
    longer.set(extra, base.length);
    return { bytes: longer, description: `${extra.length} bytes appended` };
  }
  if (kind === 4) {
    const offset = random.int(base.length);
    bytes[offset] ^= 1 << random.int(8);
    return { bytes, description: `bit flipped at ${offset}` };
  }
  // Several fields at once, so cross-field checks (size products, counts) are exercised too.
  const at: string[] = [];
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < 2 && fields.length > 0; i++) {
    const field = random.pick(fields);
    const value = random.pick(EDGE_VALUES_32);
    view.setUint32(field.offset, value, true);
    at.push(`${field.offset}=${value}`);
  }
  return { bytes, description: `fields ${at.join(", ")}` };
}

interface Outcome {
  loaded: number;
  error?: unknown;
}

/** Opens a mutated file, then makes every read it offers. */
function attempt(open: () => Iterable<() => unknown>): Outcome {
  let loaded = 0;
  try {
    for (const read of open()) {
      read();
      loaded++;
    }
    return { loaded };
  } catch (error) {
    return { loaded, error };
  }
}

interface FuzzTarget {
  base: Uint8Array;
  headerBytes: number;
  fields: readonly Field[];
  /** Extra, format-aware mutations (tried for a third of the cases). */
  structured?: (random: Random, base: Uint8Array) => Mutation;
  /** Opens the bytes (parsing the header) and returns the reads of the data to make after that. */
  open: (bytes: Uint8Array) => Iterable<() => unknown>;
}

/** Every tensor load of a set of weights. */
const tensorReads = (tensors: ReadonlyMap<string, TensorEntry>) => [...tensors.values()].map((entry) => () => entry.load());

function runFuzz(name: string, target: FuzzTarget): void {
  const random = new Random(SEED);
  const rssBefore = process.memoryUsage().rss;
  let reachedTensors = 0;
  const unexpected: string[] = [];
  for (let i = 0; i < CASES_PER_FORMAT; i++) {
    const mutation =
      target.structured && random.int(3) === 0
        ? target.structured(random, target.base)
        : mutate(random, target.base, target.headerBytes, target.fields);
    const started = process.cpuUsage();
    const outcome = attempt(() => target.open(mutation.bytes));
    const used = process.cpuUsage(started);
    const cpuMs = (used.user + used.system) / 1000;
    if (outcome.loaded > 0) reachedTensors++;
    if (outcome.error !== undefined && !(outcome.error instanceof ConversionError)) {
      unexpected.push(`case ${i} (${mutation.description}): ${String(outcome.error)}`);
    }
    if (cpuMs > MAX_CASE_CPU_MS) unexpected.push(`case ${i} (${mutation.description}) took ${cpuMs.toFixed(0)} ms of CPU`);
  }
  assert.deepEqual(unexpected, [], `${name}: seed ${SEED}`);
  // Enough cases got past the header to exercise tensor reading too. (Fewer than a mutation's odds suggest:
  // appended bytes and most offset edits break the tensor layout, which is refused before any tensor is read.)
  assert.ok(reachedTensors > CASES_PER_FORMAT / 20, `${name}: only ${reachedTensors} cases read tensors`);
  const growth = process.memoryUsage().rss - rssBefore;
  assert.ok(growth < MAX_RSS_GROWTH_BYTES, `${name}: RSS grew by ${growth} bytes`);
}

/** Offsets of the length, count, type, dimension and offset fields of a GGUF version 1 header. */
function ggufV1Fields(bytes: Uint8Array): Field[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fields: Field[] = [{ offset: 4, bytes: 4 }, { offset: 8, bytes: 4 }, { offset: 12, bytes: 4 }];
  let at = 16;
  const u32 = () => {
    fields.push({ offset: at, bytes: 4 });
    at += 4;
    return view.getUint32(at - 4, true);
  };
  const string = () => {
    const length = u32();
    at += length;
  };
  const SCALAR_BYTES: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  const value = (type: number): void => {
    if (type === 8) string();
    else if (type === 9) {
      const elementType = u32();
      const count = u32();
      for (let i = 0; i < count; i++) value(elementType);
    } else {
      if (type === 4 || type === 5) fields.push({ offset: at, bytes: 4 });
      at += SCALAR_BYTES[type];
    }
  };
  const tensorCount = view.getUint32(8, true);
  const metadataCount = view.getUint32(12, true);
  for (let i = 0; i < metadataCount; i++) {
    string();
    value(u32());
  }
  for (let i = 0; i < tensorCount; i++) {
    string();
    const rank = u32();
    for (let d = 0; d < rank; d++) u32();
    u32();
    fields.push({ offset: at, bytes: 8 });
    at += 8;
  }
  // Token strings dominate the header; keep every structural field but only some token lengths.
  return fields.filter((_, i) => i < 64 || i % 16 === 0 || i > fields.length - 200);
}

/** Edits the safetensors JSON header: dtypes, shapes, offsets, entries and the header length itself. */
function safetensorsStructured(random: Random, base: Uint8Array): Mutation {
  const headerLength = Number(new DataView(base.buffer, base.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(base.subarray(8, 8 + headerLength))) as Record<string, Record<string, unknown>>;
  const names = Object.keys(header).filter((name) => name !== "__metadata__");
  const name = random.pick(names);
  const entry = header[name];
  const edits: (() => string)[] = [
    () => ((entry.dtype = random.pick(["F16", "BF16", "F64", "I8", "U8", "Q4", "", 7])), `dtype ${JSON.stringify(entry.dtype)}`),
    () => {
      const shape = entry.shape as unknown[];
      shape[random.int(shape.length)] = random.pick([0, 1, 3, -1, 1.5, 2 ** 40, 2 ** 60, "8", null]);
      return `shape ${JSON.stringify(shape)}`;
    },
    () => ((entry.shape = random.pick([[], [1, 2, 3, 4, 5, 6, 7, 8, 9], null, {}])), `shape ${JSON.stringify(entry.shape)}`),
    () => {
      const offsets = entry.data_offsets as unknown[];
      offsets[random.int(2)] = random.pick([0, -1, 1, 2 ** 31, 2 ** 53, 1e300, "0", null]);
      return `data_offsets ${JSON.stringify(offsets)}`;
    },
    () => ((entry.data_offsets = (entry.data_offsets as number[]).slice().reverse()), "data_offsets reversed"),
    () => (delete header[name], "entry deleted"),
    () => ((header[name] = random.pick([null, [], "x", 3] as never[])), "entry replaced"),
    () => ((header[`extra.${random.int(100)}`] = { ...entry }), "entry duplicated under a new name"),
  ];
  const description = `${name}: ${random.pick(edits)()}`;
  const json = new TextEncoder().encode(JSON.stringify(header));
  const data = base.subarray(8 + headerLength);
  // Usually keep the file consistent apart from the edit; sometimes also make the length disagree.
  const declared = random.int(4) === 0 ? json.length + random.pick([-1, 1, 1000, -json.length]) : json.length;
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(Math.max(0, declared)), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return { bytes: out, description: `${description}, header length ${declared}` };
}

test("fuzzed llama2.c checkpoints fail cleanly", { timeout: 120_000 }, (t) => {
  const files = sharedFiles(t, "models/stories260K/stories260K.bin", "models/stories260K/tok512.bin");
  if (!files) return;
  const [model, tokenizer] = files.map((path) => new Uint8Array(readFileSync(path)));
  const headerFields: Field[] = Array.from({ length: 7 }, (_, i) => ({ offset: 4 * i, bytes: 4 }));
  runFuzz("llama2.c", {
    base: model,
    headerBytes: 28,
    fields: headerFields,
    // The versioned layouts: a magic number and an arbitrary version in front of the legacy fields.
    structured: (random, base) => {
      const bytes = base.slice();
      const view = new DataView(bytes.buffer);
      const version = random.pick([0, 1, 2, 3, -1]);
      view.setUint32(0, 0x616b3432, true);
      view.setInt32(4, version, true);
      bytes.set(base.subarray(0, 28), 8);
      bytes[36] = random.pick([0, 1, 2]);
      view.setInt32(37, random.pick([0, 1, 32, 64, -1]), true);
      return { bytes, description: `versioned header, version ${version}` };
    },
    open: (bytes) =>
      tensorReads(readLlama2cCheckpoint(memorySource("fuzz.bin", bytes), () => memorySource("tok512.bin", tokenizer)).tensors),
  });
});

test("fuzzed llama2.c tokenizer files fail cleanly", { timeout: 120_000 }, (t) => {
  const files = sharedFiles(t, "models/stories260K/tok512.bin");
  if (!files) return;
  const base = new Uint8Array(readFileSync(files[0]));
  runFuzz("llama2.c tokenizer", {
    base,
    headerBytes: base.length,
    fields: [{ offset: 0, bytes: 4 }],
    open: (bytes) => {
      const vocab = readLlama2cTokenizer(memorySource("fuzz-tok.bin", bytes), 512, 512);
      return [() => sentencePieceTokenizerFiles(vocab, "fuzz-tok.bin")];
    },
  });
});

test("fuzzed GGUF files fail cleanly", { timeout: 120_000 }, (t) => {
  const files = sharedFiles(t, "models/stories260K/stories260K.v1.gguf");
  if (!files) return;
  const base = new Uint8Array(readFileSync(files[0]));
  const fields = ggufV1Fields(base);
  const headerBytes = Math.max(...fields.map((field) => field.offset)) + 8;
  runFuzz("GGUF", {
    base,
    headerBytes,
    fields,
    structured: (random, original) => {
      // The same header as version 2 or 3 would be misread (64-bit fields): a real format confusion.
      const bytes = original.slice();
      const version = random.pick([2, 3, 4, 0]);
      new DataView(bytes.buffer).setUint32(4, version, true);
      return { bytes, description: `version field set to ${version}` };
    },
    open: (bytes) => tensorReads(readGgufCheckpoint(memorySource("fuzz.gguf", bytes)).tensors),
  });
});

test("fuzzed safetensors files fail cleanly", { timeout: 120_000 }, (t) => {
  const files = sharedFiles(t, "models/tinystories-656k/model.safetensors", "models/tinystories-656k/config.json");
  if (!files) return;
  const base = new Uint8Array(readFileSync(files[0]));
  const { spec, family } = decoderSpecFromHfConfig(JSON.parse(readFileSync(files[1], "utf8")), files[1]);
  const headerLength = Number(new DataView(base.buffer, base.byteOffset).getBigUint64(0, true));
  runFuzz("safetensors", {
    base,
    headerBytes: 8 + headerLength,
    fields: [{ offset: 0, bytes: 8 }, { offset: 0, bytes: 4 }, { offset: 4, bytes: 4 }],
    structured: safetensorsStructured,
    open: (bytes) => tensorReads(huggingFaceWeights("fuzz", spec, family, [memorySource("fuzz.safetensors", bytes)])),
  });
});

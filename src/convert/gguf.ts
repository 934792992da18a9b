/**
 * The GGUF container (versions 1 to 3): magic "GGUF", version, tensor and metadata counts, typed metadata
 * key/values, tensor descriptions, then the aligned tensor data. Version 1 stores counts, string lengths,
 * array lengths and dimensions as uint32; later versions as uint64. Files are read in any version and
 * written in version 3, with the same type tables.
 */
import { closeSync, openSync, writeSync } from "node:fs";
import type { BoundedReader } from "./bounded_reader.js";
import { halfToFloat, readFloats } from "./tensor_data.js";

/** "GGUF" read as a little-endian uint32. */
const MAGIC = 0x46554747;
const DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_DIMS. */
const MAX_DIMS = 4;
/** Arrays of arrays are legal; deeper nesting than this is a corrupt file (and would exhaust the stack). */
const MAX_ARRAY_DEPTH = 4;

export type GgufValue = number | bigint | boolean | string | GgufValue[];

/** GGUF's metadata value types, by id: the scalars with their byte sizes, then strings and arrays. */
const VALUE_TYPES = {
  uint8: { id: 0, bytes: 1 },
  int8: { id: 1, bytes: 1 },
  uint16: { id: 2, bytes: 2 },
  int16: { id: 3, bytes: 2 },
  uint32: { id: 4, bytes: 4 },
  int32: { id: 5, bytes: 4 },
  float32: { id: 6, bytes: 4 },
  bool: { id: 7, bytes: 1 },
  string: { id: 8, bytes: 0 },
  array: { id: 9, bytes: 0 },
  uint64: { id: 10, bytes: 8 },
  int64: { id: 11, bytes: 8 },
  float64: { id: 12, bytes: 8 },
} as const;
type ValueTypeName = keyof typeof VALUE_TYPES;
/** The value types an array written by this package may hold. */
export type GgufElementType = Exclude<ValueTypeName, "array">;

/** One tensor's description. `dims` is in ggml order: the first dimension varies fastest. */
export interface GgufTensorInfo {
  name: string;
  dims: number[];
  type: GgmlType;
  /** Absolute file offset of the data. */
  offset: number;
  byteLength: number;
}

export interface GgufFile {
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
}

/** A ggml tensor type: values are stored in blocks of `blockSize` values taking `blockBytes` bytes. */
export interface GgmlType {
  id: number;
  name: string;
  blockSize: number;
  blockBytes: number;
  /** Decodes `count` values (whole blocks) at `offset`; absent for types conversion cannot read. */
  decode?: (reader: BoundedReader, offset: number, count: number, what: string) => Float32Array;
}

const decodeAs =
  (encoding: "f32" | "f16" | "bf16") => (reader: BoundedReader, offset: number, count: number, what: string) =>
    readFloats(reader, offset, count, encoding, what);

/** ggml's types by id. The sizes of all are known so any file can be checked; a few can be decoded. */
const GGML_TYPES: ReadonlyMap<number, GgmlType> = new Map(
  (
    [
      [0, "F32", 1, 4, decodeAs("f32")],
      [1, "F16", 1, 2, decodeAs("f16")],
      [2, "Q4_0", 32, 18, dequantizeQ4_0],
      [3, "Q4_1", 32, 20],
      [6, "Q5_0", 32, 22],
      [7, "Q5_1", 32, 24],
      [8, "Q8_0", 32, 34, dequantizeQ8_0],
      [9, "Q8_1", 32, 36],
      [10, "Q2_K", 256, 84],
      [11, "Q3_K", 256, 110],
      [12, "Q4_K", 256, 144],
      [13, "Q5_K", 256, 176],
      [14, "Q6_K", 256, 210],
      [15, "Q8_K", 256, 292],
      [24, "I8", 1, 1],
      [25, "I16", 1, 2],
      [26, "I32", 1, 4],
      [27, "I64", 1, 8],
      [28, "F64", 1, 8],
      [30, "BF16", 1, 2, decodeAs("bf16")],
    ] as const
  ).map(([id, name, blockSize, blockBytes, decode]) => [id, { id, name, blockSize, blockBytes, decode }]),
);

export const DECODABLE_GGML_TYPES: readonly string[] = [...GGML_TYPES.values()]
  .filter((type) => type.decode)
  .map((type) => type.name);

/** Reads and checks a GGUF header: metadata, and every tensor's type and place inside the file. */
export function readGguf(reader: BoundedReader): GgufFile {
  const cursor = reader.cursor();
  if (reader.size < 8 || cursor.u32("the magic number") !== MAGIC) throw reader.fail("is not a GGUF file (no GGUF magic)");
  const version = cursor.u32("the version");
  if (version < 1 || version > 3) throw reader.fail(`GGUF version ${version} is not supported (supported: 1, 2, 3)`);
  // Version 1 stores every count and length as uint32.
  const size = (what: string) => (version === 1 ? cursor.u32(what) : cursor.u64(what));
  const lengthBytes = version === 1 ? 4 : 8;
  const string = (what: string) => cursor.utf8(size(`${what} length`), what);

  const tensorCount = size("the tensor count");
  const metadataCount = size("the metadata count");
  // A metadata entry takes at least a key length, a type and a 1-byte value; a tensor description at least
  // a name length, a dimension count, one dimension, a type and an offset.
  cursor.requireFits(metadataCount, lengthBytes + 5, "the metadata count");
  cursor.requireFits(tensorCount, 2 * lengthBytes + 16, "the tensor count");

  const readValue = (type: number, what: string, depth: number): GgufValue => {
    switch (type) {
      case VALUE_TYPES.uint8.id: return cursor.u8(what);
      case VALUE_TYPES.int8.id: return cursor.i8(what);
      case VALUE_TYPES.uint16.id: return cursor.u16(what);
      case VALUE_TYPES.int16.id: return cursor.i16(what);
      case VALUE_TYPES.uint32.id: return cursor.u32(what);
      case VALUE_TYPES.int32.id: return cursor.i32(what);
      case VALUE_TYPES.float32.id: return cursor.f32(what);
      case VALUE_TYPES.bool.id: {
        const value = cursor.u8(what);
        if (value > 1) throw reader.fail(`${what}: boolean value ${value}`);
        return value === 1;
      }
      case VALUE_TYPES.string.id: return string(what);
      case VALUE_TYPES.array.id: {
        if (depth >= MAX_ARRAY_DEPTH) throw reader.fail(`${what}: arrays nested deeper than ${MAX_ARRAY_DEPTH}`);
        const elementType = cursor.u32(`${what} element type`);
        const count = size(`${what} length`);
        cursor.requireFits(count, minValueBytes(elementType, lengthBytes), `${what} length`);
        const values: GgufValue[] = [];
        for (let i = 0; i < count; i++) values.push(readValue(elementType, what, depth + 1));
        return values;
      }
      case VALUE_TYPES.uint64.id: return cursor.u64(what);
      case VALUE_TYPES.int64.id: return cursor.i64(what);
      case VALUE_TYPES.float64.id: return cursor.f64(what);
      default: throw reader.fail(`${what}: unknown metadata value type ${type}`);
    }
  };

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < metadataCount; i++) {
    const key = string(`metadata key ${i}`);
    if (metadata.has(key)) throw reader.fail(`metadata key ${key} appears twice`);
    metadata.set(key, readValue(cursor.u32(`metadata ${key} type`), `metadata ${key}`, 0));
  }
  const alignment = metadata.get("general.alignment") ?? DEFAULT_ALIGNMENT;
  if (!isPowerOfTwo(alignment)) throw reader.fail(`general.alignment ${describeGgufValue(alignment)} is not a power of two`);

  const described: Omit<GgufTensorInfo, "offset" | "byteLength">[] = [];
  const relativeOffsets: number[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = string(`tensor ${i} name`);
    if (names.has(name)) throw reader.fail(`tensor ${name} appears twice`);
    names.add(name);
    const rank = cursor.u32(`tensor ${name} dimension count`);
    if (rank < 1 || rank > MAX_DIMS) throw reader.fail(`tensor ${name} has ${rank} dimensions (1 to ${MAX_DIMS} allowed)`);
    const dims: number[] = [];
    for (let d = 0; d < rank; d++) dims.push(reader.requireInt(size(`tensor ${name} size`), `tensor ${name} size`, 1));
    const typeId = cursor.u32(`tensor ${name} type`);
    const type = GGML_TYPES.get(typeId);
    if (!type) throw reader.fail(`tensor ${name} has unknown ggml type ${typeId}`);
    described.push({ name, dims, type });
    relativeOffsets.push(cursor.u64(`tensor ${name} offset`));
  }

  const dataStart = alignUp(cursor.offset, alignment);
  // As llama.cpp requires: the tensors' data in the order they are described, each starting where the one
  // before ends, rounded up to the alignment. So no two overlap, none hides a gap, and a type or shape that
  // does not match its bytes moves the next offset.
  let expectedOffset = 0;
  const tensors = described.map((info, i): GgufTensorInfo => {
    const { name, dims, type } = info;
    const count = reader.checkedProduct(dims, `tensor ${name}`);
    if (dims[0] % type.blockSize !== 0) {
      throw reader.fail(`tensor ${name}: ${type.name} needs rows of whole ${type.blockSize}-value blocks, not ${dims[0]}`);
    }
    const byteLength = (count / type.blockSize) * type.blockBytes;
    if (relativeOffsets[i] !== expectedOffset) {
      const after = i === 0 ? "the data section starts" : `the data of tensor ${described[i - 1].name} ends (aligned to ${alignment})`;
      throw reader.fail(
        `tensor ${name}: its data offset is ${relativeOffsets[i]}, but ${after} at ${expectedOffset}: ` +
          "tensor data overlaps, is out of order or leaves a gap, or a tensor's type or shape does not match its bytes",
      );
    }
    const tensor = { ...info, offset: dataStart + relativeOffsets[i], byteLength };
    reader.checkRange(tensor.offset, tensor.byteLength, `tensor ${name}`);
    expectedOffset = alignUp(relativeOffsets[i] + byteLength, alignment);
    return tensor;
  });
  // Bytes past the last tensor's padding belong to no tensor: the tensor count is lower than what the file
  // holds (which would also move the data start), or the last tensor's type or shape is wrong.
  const dataEnd = dataStart + expectedOffset;
  if (reader.size > dataEnd) {
    throw reader.fail(
      `has ${reader.size - dataEnd} bytes after the data of its ${tensorCount} tensors: the tensor count or a tensor's ` +
        "type or shape does not match the data (a corrupt or truncated header)",
    );
  }
  return { version, metadata, tensors };
}

function alignUp(offset: number, alignment: number): number {
  return Math.ceil(offset / alignment) * alignment;
}

/** Exact for every safe integer (a 32-bit `a & (a - 1)` passes 3 * 2^31). */
function isPowerOfTwo(value: GgufValue): value is number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) return false;
  const big = BigInt(value);
  return (big & (big - 1n)) === 0n;
}

/** A metadata value for messages. */
export function describeGgufValue(value: GgufValue): string {
  if (Array.isArray(value)) return `an array of ${value.length}`;
  return typeof value === "string" ? JSON.stringify(value.slice(0, 40)) : String(value);
}

/** The fewest bytes one value of a metadata type can take, to bound array lengths by the file size. */
function minValueBytes(type: number, lengthBytes: number): number {
  if (type === VALUE_TYPES.string.id) return lengthBytes;
  if (type === VALUE_TYPES.array.id) return 4 + lengthBytes;
  return Object.values(VALUE_TYPES).find((valueType) => valueType.id === type)?.bytes ?? 1;
}

/** Reads a tensor as float32 in ggml's memory order (row-major over the reversed dims). */
export function readGgufTensor(reader: BoundedReader, tensor: GgufTensorInfo): Float32Array {
  const { type } = tensor;
  const what = `tensor ${tensor.name}`;
  if (!type.decode) {
    throw reader.fail(`${what} is ${type.name}, which cannot be converted (supported: ${DECODABLE_GGML_TYPES.join(", ")})`);
  }
  const count = (tensor.byteLength / type.blockBytes) * type.blockSize;
  return type.decode(reader, tensor.offset, count, what);
}

/** Q8_0 blocks: an f16 scale, then 32 int8 values. */
function dequantizeQ8_0(reader: BoundedReader, offset: number, count: number, what: string): Float32Array {
  const blocks = count / 32;
  const bytes = reader.bytes(offset, blocks * 34, what);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(count);
  for (let b = 0; b < blocks; b++) {
    const scale = halfToFloat(view.getUint16(b * 34, true));
    for (let j = 0; j < 32; j++) out[b * 32 + j] = view.getInt8(b * 34 + 2 + j) * scale;
  }
  return out;
}

/** Q4_0 blocks: an f16 scale, then 16 bytes whose low nibbles are values 0-15 and high nibbles 16-31, offset by 8. */
function dequantizeQ4_0(reader: BoundedReader, offset: number, count: number, what: string): Float32Array {
  const blocks = count / 32;
  const bytes = reader.bytes(offset, blocks * 18, what);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(count);
  for (let b = 0; b < blocks; b++) {
    const scale = halfToFloat(view.getUint16(b * 18, true));
    for (let j = 0; j < 16; j++) {
      const packed = bytes[b * 18 + 2 + j];
      out[b * 32 + j] = ((packed & 0x0f) - 8) * scale;
      out[b * 32 + j + 16] = ((packed >> 4) - 8) * scale;
    }
  }
  return out;
}

/** A metadata value to write, with its GGUF type. */
export type GgufEntry =
  | { type: GgufElementType; value: number | bigint | boolean | string }
  | { type: "array"; element: GgufElementType; values: readonly (number | bigint | boolean | string)[] };

/** A float32 tensor to write: dims in ggml order, data read only when its turn comes. */
export interface GgufTensorSource {
  name: string;
  dims: readonly number[];
  load(): Float32Array;
}

const F32 = GGML_TYPES.get(0)!;

/**
 * Writes a GGUF version 3 file of float32 tensors (at the default alignment), one tensor in memory at a
 * time. The caller writes to a temporary path and renames it into place.
 */
export function writeGguf(path: string, metadata: ReadonlyMap<string, GgufEntry>, tensors: readonly GgufTensorSource[]): void {
  const header = new HeaderWriter();
  header.u32(MAGIC);
  header.u32(3);
  header.u64(tensors.length);
  header.u64(metadata.size);
  for (const [key, entry] of metadata) {
    header.string(key);
    header.u32(VALUE_TYPES[entry.type].id);
    if (entry.type === "array") {
      header.u32(VALUE_TYPES[entry.element].id);
      header.u64(entry.values.length);
      for (const value of entry.values) header.value(entry.element, value, key);
    } else {
      header.value(entry.type, entry.value, key);
    }
  }
  let offset = 0;
  const offsets: number[] = [];
  for (const tensor of tensors) {
    header.string(tensor.name);
    header.u32(tensor.dims.length);
    for (const size of tensor.dims) header.u64(size);
    header.u32(F32.id);
    header.u64(offset);
    offsets.push(offset);
    const bytes = tensor.dims.reduce((product, size) => product * size, F32.blockBytes);
    offset += Math.ceil(bytes / DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
  }
  header.pad(DEFAULT_ALIGNMENT);

  const fd = openSync(path, "wx");
  try {
    const dataStart = header.length;
    writeSync(fd, header.bytes());
    tensors.forEach((tensor, i) => {
      const data = tensor.load();
      const expected = tensor.dims.reduce((product, size) => product * size, 1);
      if (data.length !== expected) throw new Error(`writeGguf: tensor ${tensor.name} has ${data.length} values, its dims [${tensor.dims.join(", ")}] need ${expected}`);
      writeSync(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 0, data.byteLength, dataStart + offsets[i]);
    });
    // The file ends at the aligned end of its last tensor, as llama.cpp's own writer leaves it.
    const last = tensors.length - 1;
    const dataEnd = last < 0 ? 0 : offsets[last] + tensors[last].dims.reduce((product, size) => product * size, F32.blockBytes);
    if (offset > dataEnd) writeSync(fd, new Uint8Array(offset - dataEnd), 0, offset - dataEnd, dataStart + dataEnd);
  } finally {
    closeSync(fd);
  }
}

/** The header of a file being written, grown as needed. */
class HeaderWriter {
  private buffer = new Uint8Array(1 << 16);
  private view = new DataView(this.buffer.buffer);
  length = 0;

  private reserve(bytes: number): number {
    if (this.length + bytes > this.buffer.length) {
      const grown = new Uint8Array(Math.max(this.buffer.length * 2, this.length + bytes));
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
      this.view = new DataView(grown.buffer);
    }
    const at = this.length;
    this.length += bytes;
    return at;
  }

  u32(value: number): void {
    this.view.setUint32(this.reserve(4), value, true);
  }

  u64(value: number | bigint): void {
    this.view.setBigUint64(this.reserve(8), BigInt(value), true);
  }

  string(text: string): void {
    const bytes = Buffer.from(text, "utf8");
    this.u64(bytes.length);
    this.buffer.set(bytes, this.reserve(bytes.length));
  }

  value(type: GgufElementType, value: number | bigint | boolean | string, key: string): void {
    const wrong = () => new TypeError(`writeGguf: metadata ${key} holds ${typeof value}, not ${type}`);
    if (type === "string") {
      if (typeof value !== "string") throw wrong();
      this.string(value);
      return;
    }
    if (type === "bool") {
      if (typeof value !== "boolean") throw wrong();
      this.buffer[this.reserve(1)] = value ? 1 : 0;
      return;
    }
    if (typeof value !== "number" && typeof value !== "bigint") throw wrong();
    const at = this.reserve(VALUE_TYPES[type].bytes);
    const view = this.view;
    const number = Number(value);
    switch (type) {
      case "uint8": view.setUint8(at, number); break;
      case "int8": view.setInt8(at, number); break;
      case "uint16": view.setUint16(at, number, true); break;
      case "int16": view.setInt16(at, number, true); break;
      case "uint32": view.setUint32(at, number, true); break;
      case "int32": view.setInt32(at, number, true); break;
      case "float32": view.setFloat32(at, number, true); break;
      case "uint64": view.setBigUint64(at, BigInt(value), true); break;
      case "int64": view.setBigInt64(at, BigInt(value), true); break;
      case "float64": view.setFloat64(at, number, true); break;
    }
  }

  pad(alignment: number): void {
    this.reserve((alignment - (this.length % alignment)) % alignment);
  }

  bytes(): Uint8Array {
    return this.buffer.subarray(0, this.length);
  }
}

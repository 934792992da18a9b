/**
 * safetensors files: a little-endian u64 header length, a JSON header mapping each tensor name to its dtype,
 * shape and byte range in the data section, then the data.
 */
import type { BoundedReader } from "./bounded_reader.js";
import { decodeUtf8 } from "./bounded_reader.js";
import { describeDuplicateKey, findDuplicateKey } from "./json_keys.js";
import type { TensorEntry } from "./checkpoint.js";
import { readFloats, type FloatEncoding } from "./tensor_data.js";

/** Bytes per element of every dtype the format defines (sizes are checked for all of them). */
const DTYPE_BYTES: ReadonlyMap<string, number> = new Map([
  ["BOOL", 1], ["U8", 1], ["I8", 1], ["F8_E5M2", 1], ["F8_E4M3", 1],
  ["I16", 2], ["U16", 2], ["F16", 2], ["BF16", 2],
  ["I32", 4], ["U32", 4], ["F32", 4],
  ["I64", 8], ["U64", 8], ["F64", 8],
]);

/** The dtypes conversion reads, widened to float32. */
const FLOAT_ENCODINGS: ReadonlyMap<string, FloatEncoding> = new Map([["F32", "f32"], ["F16", "f16"], ["BF16", "bf16"]]);

/** The format's own limit on the header, which keeps a corrupt length from allocating gigabytes. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

const MAX_RANK = 8;

/**
 * Reads the header of a safetensors file: every tensor, checked to lie inside the file with a size that
 * matches its dtype and shape.
 */
export function readSafetensors(reader: BoundedReader): Map<string, TensorEntry> {
  const cursor = reader.cursor();
  const headerLength = cursor.u64("the header length");
  if (headerLength < 2 || headerLength > Math.min(MAX_HEADER_BYTES, reader.size - 8)) {
    throw reader.fail(
      `the header length ${headerLength} does not fit the file of ${reader.size} bytes (not a safetensors file, or truncated)`,
    );
  }
  const text = decodeUtf8(reader, cursor.bytes(headerLength, "the header"), "the header");
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (error) {
    if (error instanceof SyntaxError) throw reader.fail(`the header is not valid JSON (${error.message})`);
    throw error;
  }
  if (!isRecord(header)) throw reader.fail("the header is not a JSON object");
  const duplicate = findDuplicateKey(text);
  if (duplicate) throw reader.fail(`the header has the key ${describeDuplicateKey(duplicate)} twice (JSON would keep only the last)`);

  const dataStart = 8 + headerLength;
  const dataBytes = reader.size - dataStart;
  const tensors = new Map<string, TensorEntry>();
  const ranges: { name: string; begin: number; end: number }[] = [];
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const what = `tensor ${name}`;
    if (!isRecord(info)) throw reader.fail(`${what}: the header entry is not an object`);
    const { dtype, shape, data_offsets: offsets } = info;
    const missing = (field: string) => reader.fail(`${what}: the header entry has no ${field}`);
    if (dtype === undefined) throw missing("dtype");
    const elementBytes = typeof dtype === "string" ? DTYPE_BYTES.get(dtype) : undefined;
    if (elementBytes === undefined) throw reader.fail(`${what}: unknown dtype ${JSON.stringify(dtype)}`);
    if (shape === undefined) throw missing("shape");
    if (!Array.isArray(shape) || shape.length > MAX_RANK || !shape.every(isNonNegativeInteger)) {
      throw reader.fail(`${what}: the shape ${JSON.stringify(shape)} is not a list of at most ${MAX_RANK} sizes`);
    }
    if (offsets === undefined) throw missing("data_offsets");
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInteger)) {
      throw reader.fail(`${what}: data_offsets ${JSON.stringify(offsets)} is not a pair of byte offsets`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end || end > dataBytes) {
      throw reader.fail(`${what}: data_offsets [${begin}, ${end}] lie outside the data section of ${dataBytes} bytes`);
    }
    const count = reader.checkedProduct(shape as number[], what);
    if (count * elementBytes !== end - begin) {
      throw reader.fail(
        `${what}: ${dtype} [${shape.join(", ")}] needs ${count * elementBytes} bytes but data_offsets give ${end - begin}`,
      );
    }
    ranges.push({ name, begin, end });
    const encoding = FLOAT_ENCODINGS.get(dtype as string);
    const problem = encoding ? undefined : `dtype ${dtype} cannot be converted (supported: F32, F16, BF16)`;
    tensors.set(name, {
      shape: shape as number[],
      problem,
      load() {
        if (!encoding) throw reader.fail(`${what}: ${problem}`);
        return { shape: shape as number[], data: readFloats(reader, dataStart + begin, count, encoding, what) };
      },
    });
  }
  checkDataLayout(reader, ranges, dataBytes);
  return tensors;
}

/**
 * As the safetensors library requires: the tensors' byte ranges, in offset order, tile the data section
 * exactly. Overlapping ranges would read one tensor's bytes as another's; a gap or a short end means the
 * header does not describe the file it heads.
 */
function checkDataLayout(reader: BoundedReader, ranges: { name: string; begin: number; end: number }[], dataBytes: number): void {
  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let previous: { name: string; end: number } = { name: "", end: 0 };
  for (const range of ranges) {
    if (range.begin < previous.end) {
      throw reader.fail(
        `tensor ${range.name}: data_offsets [${range.begin}, ${range.end}] overlap those of tensor ${previous.name}, which end at ${previous.end}`,
      );
    }
    if (range.begin > previous.end) {
      const before = previous.name === "" ? "the data section starts at 0" : `tensor ${previous.name} ends at ${previous.end}`;
      throw reader.fail(`tensor ${range.name}: data_offsets start at ${range.begin}, but ${before}: the header leaves a gap`);
    }
    previous = range;
  }
  if (previous.end !== dataBytes) {
    throw reader.fail(
      `the tensors' data ends at byte ${previous.end} of the data section, which has ${dataBytes}: the header does not describe the whole file`,
    );
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isNonNegativeInteger(value: unknown): boolean {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

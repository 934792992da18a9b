/**
 * Bounded reads from untrusted checkpoint files, shared by every reader in this folder.
 *
 * Checkpoints are untrusted input: every offset, length and count read from a header is checked against the
 * bytes the file really has before anything is read or allocated, so a corrupt header ends in a
 * {@link ConversionError} that names the file, never in a crash, a hang or a giant allocation.
 */
import { closeSync, fstatSync, openSync, readSync, statSync, type Stats } from "node:fs";
import { byteOrder } from "../platform/byte_order.js";
import { ConversionError } from "./errors.js";
import { describeDuplicateKey, findDuplicateKey } from "./json_keys.js";

/** Random access to the bytes of one checkpoint: a file, or memory in tests. */
export interface ByteSource {
  /** How errors name this source (the file path). */
  readonly name: string;
  readonly size: number;
  /** Fills `target` with the bytes at `position`; the caller has checked the range. */
  readInto(target: Uint8Array, position: number): void;
  close(): void;
}

/** Opens a regular file for bounded reading; a missing or unreadable file is a {@link ConversionError}. */
export function openFileSource(path: string): ByteSource {
  // Checked before opening: opening a named pipe for reading would wait for a writer for ever.
  let kind: Stats;
  try {
    kind = statSync(path);
  } catch (error) {
    throw new ConversionError(path, `cannot open: ${(error as Error).message}`, { cause: error });
  }
  if (!kind.isFile()) throw new ConversionError(path, kind.isDirectory() ? "is a directory, not a file" : "is not a regular file");
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (error) {
    throw new ConversionError(path, `cannot open: ${(error as Error).message}`, { cause: error });
  }
  const stats = fstatSync(fd);
  if (!stats.isFile()) {
    closeSync(fd);
    throw new ConversionError(path, "is not a regular file");
  }
  return {
    name: path,
    size: stats.size,
    readInto(target, position) {
      let done = 0;
      while (done < target.length) {
        let n: number;
        try {
          n = readSync(fd, target, done, target.length - done, position + done);
        } catch (error) {
          throw new ConversionError(path, `cannot read: ${(error as Error).message}`, { cause: error });
        }
        // The file shrank while we read it.
        if (n === 0) throw new ConversionError(path, `ended early at offset ${position + done}`);
        done += n;
      }
    },
    close() {
      closeSync(fd);
    },
  };
}

/** Bytes already in memory (a generated or downloaded checkpoint) as a source. */
export function memorySource(name: string, bytes: Uint8Array): ByteSource {
  return {
    name,
    size: bytes.length,
    readInto(target, position) {
      target.set(bytes.subarray(position, position + target.length));
    },
    close() {},
  };
}

/** Checked reads from a {@link ByteSource}. */
export class BoundedReader {
  constructor(readonly source: ByteSource) {
    // Tensor data is decoded in place as little-endian; every supported format stores little-endian data.
    if (byteOrder() !== "LE") throw new Error("attention-sinks conversion needs a little-endian host");
  }

  get name(): string {
    return this.source.name;
  }

  get size(): number {
    return this.source.size;
  }

  /** An error about this file. */
  fail(problem: string): ConversionError {
    return new ConversionError(this.source.name, problem);
  }

  /** Throws unless `length` bytes at `offset` lie inside the file. */
  checkRange(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw this.fail(`${what}: invalid range (offset ${offset}, ${length} bytes)`);
    }
    if (offset + length > this.size) {
      throw this.fail(
        `${what} needs bytes ${offset}..${offset + length} but the file has only ${this.size} bytes (truncated or corrupt)`,
      );
    }
  }

  /** The `length` bytes at `offset`, in a fresh buffer. */
  bytes(offset: number, length: number, what: string): Uint8Array {
    this.checkRange(offset, length, what);
    const target = new Uint8Array(length);
    this.source.readInto(target, offset);
    return target;
  }

  /**
   * `byteLength` bytes at `offset` in a fresh, 4-byte aligned buffer, so typed-array views need no copy.
   */
  alignedBytes(offset: number, byteLength: number, what: string): ArrayBuffer {
    this.checkRange(offset, byteLength, what);
    const buffer = new ArrayBuffer(Math.ceil(byteLength / 4) * 4);
    this.source.readInto(new Uint8Array(buffer, 0, byteLength), offset);
    return buffer;
  }

  /** A sequential reader starting at `offset`. */
  cursor(offset = 0): ByteCursor {
    return new ByteCursor(this, offset);
  }

  /** Throws unless `value` is an integer in [min, max]. */
  requireInt(value: number, what: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
    if (!Number.isInteger(value) || value < min || value > max) {
      throw this.fail(`${what} is ${value}, expected an integer from ${min} to ${max}`);
    }
    return value;
  }

  /** The product of `factors`, failing (instead of losing precision) once it passes 2^53. */
  checkedProduct(factors: readonly number[], what: string): number {
    let product = 1;
    for (const factor of factors) {
      product *= factor;
      if (!Number.isSafeInteger(product)) throw this.fail(`${what}: the size ${factors.join(" x ")} is absurd`);
    }
    return product;
  }
}

const WINDOW_BYTES = 1 << 16;

/**
 * Reads little-endian fields one after another, refilling a small window from the file as it goes, so a
 * header of any length costs one read per 64 KiB. Each read names what it reads for the error message.
 */
export class ByteCursor {
  private window: Uint8Array = new Uint8Array(0);
  private view: DataView = new DataView(new ArrayBuffer(0));
  private windowStart = 0;

  constructor(
    readonly reader: BoundedReader,
    private position: number,
  ) {}

  get offset(): number {
    return this.position;
  }

  /** Bytes left between the cursor and the end of the file. */
  get remaining(): number {
    return this.reader.size - this.position;
  }

  /** Throws unless `count` items of at least `minBytes` each can still fit in the file. */
  requireFits(count: number, minBytes: number, what: string): void {
    if (count * minBytes > this.remaining) {
      throw this.reader.fail(
        `${what} is ${count}, but only ${this.remaining} bytes remain after offset ${this.position} (truncated or corrupt)`,
      );
    }
  }

  /**
   * Makes `length` bytes at the cursor available in the window and returns their offset in it. It may
   * replace the window, so callers take the offset before touching `window` or `view`.
   */
  private take(length: number, what: string): number {
    this.reader.checkRange(this.position, length, what);
    let start = this.position - this.windowStart;
    if (start < 0 || start + length > this.window.length) {
      const size = Math.min(Math.max(length, WINDOW_BYTES), this.reader.size - this.position);
      this.window = this.reader.bytes(this.position, size, what);
      this.view = new DataView(this.window.buffer, this.window.byteOffset, this.window.byteLength);
      this.windowStart = this.position;
      start = 0;
    }
    this.position += length;
    return start;
  }

  u8(what: string): number {
    const at = this.take(1, what);
    return this.window[at];
  }

  i8(what: string): number {
    const at = this.take(1, what);
    return this.view.getInt8(at);
  }

  u16(what: string): number {
    const at = this.take(2, what);
    return this.view.getUint16(at, true);
  }

  i16(what: string): number {
    const at = this.take(2, what);
    return this.view.getInt16(at, true);
  }

  u32(what: string): number {
    const at = this.take(4, what);
    return this.view.getUint32(at, true);
  }

  i32(what: string): number {
    const at = this.take(4, what);
    return this.view.getInt32(at, true);
  }

  /** A 64-bit unsigned integer, which must fit a JavaScript number exactly. */
  u64(what: string): number {
    const at = this.take(8, what);
    const value = this.view.getBigUint64(at, true);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw this.reader.fail(`${what} is ${value}, which is absurd`);
    return Number(value);
  }

  /** A 64-bit signed integer, as a number when exact and a bigint otherwise. */
  i64(what: string): number | bigint {
    const at = this.take(8, what);
    const value = this.view.getBigInt64(at, true);
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }

  f32(what: string): number {
    const at = this.take(4, what);
    return this.view.getFloat32(at, true);
  }

  f64(what: string): number {
    const at = this.take(8, what);
    return this.view.getFloat64(at, true);
  }

  /** `length` raw bytes. */
  bytes(length: number, what: string): Uint8Array {
    const start = this.take(length, what);
    return this.window.slice(start, start + length);
  }

  /** `length` bytes of UTF-8; invalid UTF-8 is an error. */
  utf8(length: number, what: string): string {
    return decodeUtf8(this.reader, this.bytes(length, what), what);
  }
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** Decodes UTF-8, reporting invalid bytes as an error about `reader`'s file. */
export function decodeUtf8(reader: BoundedReader, bytes: Uint8Array, what: string): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw reader.fail(`${what} is not valid UTF-8`);
  }
}

/** A whole small file (a JSON config or tokenizer) as text, refusing files over `maxBytes`. */
function readTextFile(path: string, maxBytes: number): string {
  const source = openFileSource(path);
  try {
    const reader = new BoundedReader(source);
    if (source.size > maxBytes) throw reader.fail(`is ${source.size} bytes, more than the ${maxBytes} expected`);
    return decodeUtf8(reader, reader.bytes(0, source.size, "the text"), "the text");
  } finally {
    source.close();
  }
}

/** A whole small JSON file, parsed; invalid JSON is a {@link ConversionError}. */
export function readJsonFile(path: string, maxBytes: number): { text: string; value: unknown } {
  const text = readTextFile(path, maxBytes);
  if (text.trim() === "") throw new ConversionError(path, "is empty: it should hold JSON");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new ConversionError(path, `is not valid JSON (${(error as Error).message})`);
  }
  const duplicate = findDuplicateKey(text);
  if (duplicate) throw new ConversionError(path, `has the key ${describeDuplicateKey(duplicate)} twice: say each value once`);
  return { text, value };
}

/**
 * A self-checking binary record for saved state: a stream's KV cache and bookkeeping, or a chat session
 * around it. Layout: magic `ASNK`, format version, the record's kind, a JSON header, typed-array sections,
 * then a SHA-256 of everything before it, so a truncated, corrupt or foreign file is refused on load
 * instead of being read as numbers.
 */
import { createHash } from "node:crypto";
import { byteOrder } from "../platform/byte_order.js";
import { StateRecordError, type StateArray, type StateSections } from "./state_sections.js";

export { StateRecordError, type StateArray, type StateSections };

const MAGIC = Buffer.from("ASNK", "latin1");
const VERSION = 1;
const DIGEST_BYTES = 32;
const ARRAY_TYPES = [Float32Array, Float64Array, Uint16Array, Uint32Array, BigInt64Array, Uint8Array] as const;

function typeCode(array: StateArray): number {
  return ARRAY_TYPES.findIndex((type) => array instanceof type);
}

/** Encodes a record; typed arrays are stored in this machine's byte order, which the header names. */
export function encodeStateRecord(kind: string, header: object, arrays: readonly StateArray[]): Uint8Array {
  const kindBytes = Buffer.from(kind, "utf8");
  const headerBytes = Buffer.from(JSON.stringify({ ...header, byte_order: byteOrder() }), "utf8");
  const payload = arrays.reduce((sum, array) => sum + 5 + array.byteLength, 0);
  const out = Buffer.allocUnsafeSlow(MAGIC.length + 2 + kindBytes.length + 4 + headerBytes.length + 4 + payload + DIGEST_BYTES);
  let at = MAGIC.copy(out, 0);
  at = out.writeUInt8(VERSION, at);
  at = out.writeUInt8(kindBytes.length, at);
  at += kindBytes.copy(out, at);
  at = out.writeUInt32LE(headerBytes.length, at);
  at += headerBytes.copy(out, at);
  at = out.writeUInt32LE(arrays.length, at);
  for (const array of arrays) {
    at = out.writeUInt8(typeCode(array), at);
    at = out.writeUInt32LE(array.byteLength, at);
    out.set(new Uint8Array(array.buffer, array.byteOffset, array.byteLength), at);
    at += array.byteLength;
  }
  createHash("sha256").update(out.subarray(0, at)).digest().copy(out, at);
  // A plain Uint8Array: its slice() copies, as callers expect (a Buffer's would share the bytes).
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

/** Decodes a record of `kind`; the arrays are fresh copies. */
export function decodeStateRecord(bytes: Uint8Array, kind: string): StateSections {
  const data = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (data.length < MAGIC.length + 2 + DIGEST_BYTES || !data.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new StateRecordError("not an attention-sinks state record");
  }
  const body = data.subarray(0, data.length - DIGEST_BYTES);
  if (!createHash("sha256").update(body).digest().equals(data.subarray(body.length))) {
    throw new StateRecordError("the record's checksum does not match: it is truncated or corrupt");
  }
  const reader = new RecordReader(body, MAGIC.length);
  const version = reader.u8();
  if (version !== VERSION) throw new StateRecordError(`record format version ${version}; this version reads ${VERSION}`);
  const found = reader.bytes(reader.u8()).toString("utf8");
  if (found !== kind) throw new StateRecordError(`a "${found}" record where a "${kind}" record was expected`);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(reader.bytes(reader.u32()).toString("utf8")) as Record<string, unknown>;
  } catch (error) {
    throw new StateRecordError(`the record's header is not JSON: ${(error as Error).message}`);
  }
  if (header.byte_order !== byteOrder()) throw new StateRecordError(`the record was written in ${String(header.byte_order)} byte order; this machine is ${byteOrder()}`);
  const arrays: StateArray[] = [];
  for (let count = reader.u32(); arrays.length < count; ) {
    const type = ARRAY_TYPES[reader.u8()];
    const section = reader.bytes(reader.u32());
    if (type === undefined || section.length % type.BYTES_PER_ELEMENT !== 0) throw new StateRecordError("the record has a malformed array section");
    const copy = new Uint8Array(section); // aligned, and the caller's to keep
    arrays.push(new type(copy.buffer, 0, section.length / type.BYTES_PER_ELEMENT));
  }
  if (!reader.done) throw new StateRecordError("the record has bytes after its last section");
  return { header, arrays };
}

class RecordReader {
  constructor(
    private readonly data: Buffer,
    private at: number,
  ) {}

  get done(): boolean {
    return this.at === this.data.length;
  }

  private need(n: number): void {
    if (this.at + n > this.data.length) throw new StateRecordError("the record ends early");
  }

  u8(): number {
    this.need(1);
    return this.data.readUInt8(this.at++);
  }

  u32(): number {
    this.need(4);
    const value = this.data.readUInt32LE(this.at);
    this.at += 4;
    return value;
  }

  bytes(n: number): Buffer {
    this.need(n);
    const out = this.data.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }
}

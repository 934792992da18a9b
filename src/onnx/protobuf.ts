/**
 * A minimal protocol buffers encoder (only what ONNX files need).
 *
 * A message encodes to a list of chunks: encoded bytes, and placeholders for large byte fields whose length
 * is known up front but whose content is produced later. Every length in the message can therefore be
 * computed before any weight is loaded, and the content streamed to disk one placeholder at a time.
 */

/** The content of a length-delimited field, produced only when the message is written out. */
export interface Deferred<T> {
  readonly byteLength: number;
  readonly payload: T;
}

export type Chunk<T> = Uint8Array | Deferred<T>;

const WIRE_VARINT = 0;
const WIRE_LENGTH_DELIMITED = 2;
const WIRE_FIXED32 = 5;

/** Byte fields up to this size are copied into the surrounding bytes rather than kept as their own chunk. */
const INLINE_BYTES_LIMIT = 256;

const utf8 = new TextEncoder();

/** Encodes one message. Fields are written in call order; repeated fields are written one entry per call. */
export class ProtoWriter<T = never> {
  private readonly chunks: Chunk<T>[] = [];
  /** Small encoded bytes not yet sealed into a chunk. */
  private pending: number[] = [];
  private sealedLength = 0;

  get byteLength(): number {
    return this.sealedLength + this.pending.length;
  }

  /** An int32, int64 or enum field. Negative values take ten bytes, as protobuf encodes them. */
  int(field: number, value: number): this {
    this.tag(field, WIRE_VARINT);
    this.varint(value);
    return this;
  }

  float(field: number, value: number): this {
    this.tag(field, WIRE_FIXED32);
    const bytes = new Uint8Array(4);
    new DataView(bytes.buffer).setFloat32(0, value, true);
    this.pending.push(...bytes);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, utf8.encode(value));
  }

  bytes(field: number, value: Uint8Array): this {
    this.tag(field, WIRE_LENGTH_DELIMITED);
    this.varint(value.byteLength);
    if (value.byteLength <= INLINE_BYTES_LIMIT) {
      for (const byte of value) this.pending.push(byte);
    } else {
      this.append(value);
    }
    return this;
  }

  /** A bytes field whose content is supplied at write time. */
  deferredBytes(field: number, value: Deferred<T>): this {
    this.tag(field, WIRE_LENGTH_DELIMITED);
    this.varint(value.byteLength);
    this.append(value);
    return this;
  }

  /** An embedded message (the child must not be written to afterwards). */
  message(field: number, child: ProtoWriter<T>): this {
    this.tag(field, WIRE_LENGTH_DELIMITED);
    this.varint(child.byteLength);
    for (const chunk of child.finish()) this.append(chunk);
    return this;
  }

  finish(): Chunk<T>[] {
    this.seal();
    return this.chunks;
  }

  private tag(field: number, wireType: number): void {
    this.varint(field * 8 + wireType);
  }

  private varint(value: number): void {
    if (!Number.isSafeInteger(value)) throw new Error(`protobuf: ${value} is not a safe integer`);
    if (value < 0) {
      // Two's complement over 64 bits, as int64 fields require.
      let wide = BigInt.asUintN(64, BigInt(value));
      while (wide >= 0x80n) {
        this.pending.push(Number(wide & 0x7fn) | 0x80);
        wide >>= 7n;
      }
      this.pending.push(Number(wide));
      return;
    }
    let rest = value;
    while (rest >= 0x80) {
      this.pending.push((rest % 0x80) | 0x80);
      rest = Math.floor(rest / 0x80);
    }
    this.pending.push(rest);
  }

  private append(chunk: Chunk<T>): void {
    this.seal();
    this.chunks.push(chunk);
    this.sealedLength += chunk.byteLength;
  }

  private seal(): void {
    if (this.pending.length === 0) return;
    this.chunks.push(Uint8Array.from(this.pending));
    this.sealedLength += this.pending.length;
    this.pending = [];
  }
}

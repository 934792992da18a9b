/**
 * Reads what a loaded model's checks need out of an ONNX file without loading the rest: a protobuf walk over
 * ModelProto.graph that collects the operator types of its nodes and the named float initializers asked for,
 * skipping every other field by its length and reading only the bytes of those tensors (inline, or in their
 * external data file).
 */
import { open, type FileHandle } from "node:fs/promises";
import { dirname, join } from "node:path";
import { float16ToFloat32Table } from "./float16.js";
import { DataType } from "./onnx_model.js";

export interface FloatInitializer {
  dims: number[];
  values: Float32Array;
}

const MODEL_GRAPH = 7;
const GRAPH_NODE = 1;
const NODE_OP_TYPE = 4;
const GRAPH_INITIALIZER = 5;
const TENSOR = { dims: 1, dataType: 2, floatData: 4, name: 8, rawData: 9, externalData: 13 } as const;
const WIRE = { varint: 0, fixed64: 1, lengthDelimited: 2, fixed32: 5 } as const;

/** A byte range of the file. */
interface Span {
  start: number;
  end: number;
}

class FileReader {
  constructor(private readonly file: FileHandle) {}

  async bytes(start: number, length: number): Promise<Uint8Array> {
    const buffer = new Uint8Array(length);
    const { bytesRead } = await this.file.read(buffer, 0, length, start);
    if (bytesRead !== length) throw new Error(`the ONNX file ends at byte ${start + bytesRead}, inside a field`);
    return buffer;
  }

  /** The fields of the message in `span`: number, wire type, and where a length-delimited payload lies. */
  async *fields(span: Span): AsyncGenerator<{ field: number; wire: number; value: number; payload: Span }> {
    let at = span.start;
    while (at < span.end) {
      const head = await this.bytes(at, Math.min(20, span.end - at));
      let offset = 0;
      const varint = (): number => {
        let result = 0;
        for (let shift = 0; ; shift += 7) {
          if (offset >= head.length) throw new Error("a protobuf varint runs past its message");
          const byte = head[offset++];
          result += (byte & 0x7f) * 2 ** shift;
          if (byte < 0x80) return result;
        }
      };
      const tag = varint();
      const [field, wire] = [Math.floor(tag / 8), tag % 8];
      let value = 0;
      let payload: Span = { start: 0, end: 0 };
      if (wire === WIRE.varint) value = varint();
      else if (wire === WIRE.lengthDelimited) {
        const length = varint();
        payload = { start: at + offset, end: at + offset + length };
        offset += length;
      } else if (wire === WIRE.fixed64) offset += 8;
      else if (wire === WIRE.fixed32) offset += 4;
      else throw new Error(`unsupported protobuf wire type ${wire}`);
      at += offset;
      if (at > span.end) throw new Error("a protobuf field runs past its message");
      yield { field, wire, value, payload };
    }
  }

  async text(span: Span): Promise<string> {
    return new TextDecoder().decode(await this.bytes(span.start, span.end - span.start));
  }
}

export interface GraphSummary {
  /** The operator types of the main graph's nodes. */
  op_types: Set<string>;
  /** The float32 or float16 initializers asked for that the graph has. */
  initializers: Map<string, FloatInitializer>;
}

export async function readGraphSummary(path: string, initializerNames: ReadonlySet<string>): Promise<GraphSummary> {
  const file = await open(path, "r");
  const summary: GraphSummary = { op_types: new Set(), initializers: new Map() };
  try {
    const reader = new FileReader(file);
    const { size } = await file.stat();
    for await (const graph of reader.fields({ start: 0, end: size })) {
      if (graph.field !== MODEL_GRAPH || graph.wire !== WIRE.lengthDelimited) continue;
      for await (const entry of reader.fields(graph.payload)) {
        if (entry.wire !== WIRE.lengthDelimited) continue;
        if (entry.field === GRAPH_NODE) {
          for await (const field of reader.fields(entry.payload)) {
            if (field.field === NODE_OP_TYPE) summary.op_types.add(await reader.text(field.payload));
          }
        } else if (entry.field === GRAPH_INITIALIZER) {
          const tensor = await readTensor(reader, entry.payload, path, initializerNames);
          if (tensor) summary.initializers.set(tensor.name, tensor);
        }
      }
    }
  } finally {
    await file.close();
  }
  return summary;
}

async function readTensor(reader: FileReader, span: Span, path: string, names: ReadonlySet<string>): Promise<(FloatInitializer & { name: string }) | undefined> {
  let name: string | undefined;
  let dataType = 0;
  const dims: number[] = [];
  let raw: Span | undefined;
  let packedFloats: Span | undefined;
  const external: Record<string, string> = {};
  for await (const { field, wire, value, payload } of reader.fields(span)) {
    if (field === TENSOR.name) name = await reader.text(payload);
    else if (field === TENSOR.dataType) dataType = value;
    else if (field === TENSOR.dims && wire === WIRE.varint) dims.push(value);
    else if (field === TENSOR.dims && wire === WIRE.lengthDelimited) dims.push(...packedVarints(await reader.bytes(payload.start, payload.end - payload.start)));
    else if (field === TENSOR.rawData) raw = payload;
    else if (field === TENSOR.floatData && wire === WIRE.lengthDelimited) packedFloats = payload;
    else if (field === TENSOR.externalData) {
      let key = "";
      for await (const kv of reader.fields(payload)) {
        if (kv.field === 1) key = await reader.text(kv.payload);
        else if (kv.field === 2) external[key] = await reader.text(kv.payload);
      }
    }
  }
  if (name === undefined || !names.has(name)) return undefined;
  if (dataType !== DataType.FLOAT && dataType !== DataType.FLOAT16) throw new Error(`the initializer ${name} of ${path} is not float32 or float16`);
  const count = dims.reduce((n, d) => n * d, 1);
  let bytes: Uint8Array;
  if (external.location !== undefined) {
    const data = await open(join(dirname(path), external.location), "r");
    try {
      bytes = await new FileReader(data).bytes(Number(external.offset ?? 0), count * (dataType === DataType.FLOAT ? 4 : 2));
    } finally {
      await data.close();
    }
  } else {
    const source = raw ?? packedFloats;
    bytes = source ? await reader.bytes(source.start, source.end - source.start) : new Uint8Array(0);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const values = new Float32Array(count);
  const half = dataType === DataType.FLOAT16 ? float16ToFloat32Table() : null;
  if (bytes.byteLength !== count * (half ? 2 : 4)) throw new Error(`the initializer ${name} of ${path} holds ${bytes.byteLength} bytes for ${count} values`);
  for (let i = 0; i < count; i++) values[i] = half ? half[view.getUint16(2 * i, true)] : view.getFloat32(4 * i, true);
  return { name, dims, values };
}

/** The values of a packed repeated varint field. */
function packedVarints(bytes: Uint8Array): number[] {
  const values: number[] = [];
  let [value, shift] = [0, 0];
  for (const byte of bytes) {
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if (byte < 0x80) {
      values.push(value);
      [value, shift] = [0, 0];
    }
  }
  return values;
}

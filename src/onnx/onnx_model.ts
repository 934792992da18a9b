/**
 * The subset of the ONNX format (onnx.proto) this package writes: plain data types for a model and their
 * protobuf encoding. Field numbers follow onnx.proto; repeated scalars are written unpacked, the canonical
 * proto2 encoding that every ONNX reader accepts.
 */
import { ProtoWriter, type Chunk, type Deferred } from "./protobuf.js";

export const ONNX_IR_VERSION = 8;
/** The ai.onnx opset every graph here is built against. */
export const ONNX_OPSET_VERSION = 17;
export const PRODUCER_NAME = "attention-sinks";
/** The domain of onnxruntime's contrib operators (RotaryEmbedding, MultiHeadAttention, ...), at its opset 1. */
export const CONTRIB_DOMAIN = "com.microsoft";

/** TensorProto.DataType values in use. */
export const DataType = { FLOAT: 1, UINT8: 2, INT8: 3, INT32: 6, INT64: 7, BOOL: 9, FLOAT16: 10 } as const;
export type DataType = (typeof DataType)[keyof typeof DataType];

/** Where a tensor's bytes live in an external data file (ONNX `data_location: EXTERNAL`). */
export interface ExternalRange {
  /** Path of the data file, relative to the model file. */
  location: string;
  offset: number;
  length: number;
}

export interface TensorDef<T = never> {
  name: string;
  dataType: DataType;
  dims: readonly number[];
  /** Little-endian raw bytes, bytes produced at write time, or a range of an external data file. */
  data: Uint8Array | Deferred<T> | ExternalRange;
}

export type AttributeDef =
  | { name: string; kind: "int"; value: number }
  | { name: string; kind: "ints"; value: readonly number[] }
  | { name: string; kind: "float"; value: number }
  | { name: string; kind: "floats"; value: readonly number[] }
  | { name: string; kind: "string"; value: string }
  | { name: string; kind: "tensor"; value: TensorDef }
  | { name: string; kind: "graph"; value: GraphDef };

export interface NodeDef {
  name: string;
  opType: string;
  inputs: readonly string[];
  outputs: readonly string[];
  attributes: readonly AttributeDef[];
  /** The operator set the op belongs to; absent for the default ai.onnx domain. */
  domain?: string;
}

/** A graph input or output: a tensor whose dimensions are fixed numbers or symbolic names. */
export interface ValueInfoDef {
  name: string;
  elemType: DataType;
  dims: readonly (number | string)[];
}

export interface GraphDef<T = never> {
  name: string;
  nodes: readonly NodeDef[];
  initializers: readonly TensorDef<T>[];
  inputs: readonly ValueInfoDef[];
  outputs: readonly ValueInfoDef[];
}

/** Encodes a ModelProto; tensors with deferred data stay placeholders in the returned chunks. */
export function encodeModel<T>(graph: GraphDef<T>): Chunk<T>[] {
  const opset = new ProtoWriter<T>().string(1, "").int(2, ONNX_OPSET_VERSION);
  const model = new ProtoWriter<T>().int(1, ONNX_IR_VERSION).string(2, PRODUCER_NAME).message(7, encodeGraph(graph)).message(8, opset);
  if (graph.nodes.some((node) => node.domain === CONTRIB_DOMAIN)) {
    model.message(8, new ProtoWriter<T>().string(1, CONTRIB_DOMAIN).int(2, 1));
  }
  return model.finish();
}

function encodeGraph<T>(graph: GraphDef<T>): ProtoWriter<T> {
  const writer = new ProtoWriter<T>();
  for (const node of graph.nodes) writer.message(1, encodeNode<T>(node));
  writer.string(2, graph.name);
  for (const tensor of graph.initializers) writer.message(5, encodeTensor(tensor));
  for (const input of graph.inputs) writer.message(11, encodeValueInfo<T>(input));
  for (const output of graph.outputs) writer.message(12, encodeValueInfo<T>(output));
  return writer;
}

function encodeNode<T>(node: NodeDef): ProtoWriter<T> {
  const writer = new ProtoWriter<T>();
  for (const input of node.inputs) writer.string(1, input);
  for (const output of node.outputs) writer.string(2, output);
  writer.string(3, node.name).string(4, node.opType);
  for (const attribute of node.attributes) writer.message(5, encodeAttribute<T>(attribute));
  if (node.domain) writer.string(7, node.domain);
  return writer;
}

/** AttributeProto.AttributeType values. */
const ATTRIBUTE_TYPE = { float: 1, int: 2, string: 3, tensor: 4, graph: 5, floats: 6, ints: 7 } as const;

function encodeAttribute<T>(attribute: AttributeDef): ProtoWriter<T> {
  const writer = new ProtoWriter<T>().string(1, attribute.name).int(20, ATTRIBUTE_TYPE[attribute.kind]);
  switch (attribute.kind) {
    case "float":
      return writer.float(2, attribute.value);
    case "int":
      return writer.int(3, attribute.value);
    case "string":
      return writer.string(4, attribute.value);
    case "tensor":
      return writer.message(5, encodeTensor<T>(attribute.value));
    case "graph":
      return writer.message(6, encodeGraph<T>(attribute.value));
    case "floats":
      for (const value of attribute.value) writer.float(7, value);
      return writer;
    case "ints":
      for (const value of attribute.value) writer.int(8, value);
      return writer;
  }
}

function encodeTensor<T>(tensor: TensorDef<T>): ProtoWriter<T> {
  const writer = new ProtoWriter<T>();
  for (const dim of tensor.dims) writer.int(1, dim);
  writer.int(2, tensor.dataType).string(8, tensor.name);
  const data = tensor.data;
  if (data instanceof Uint8Array) return writer.bytes(9, data);
  if ("payload" in data) return writer.deferredBytes(9, data);
  const entry = (key: string, value: string) => new ProtoWriter<T>().string(1, key).string(2, value);
  writer.message(13, entry("location", data.location));
  writer.message(13, entry("offset", String(data.offset)));
  writer.message(13, entry("length", String(data.length)));
  return writer.int(14, 1); // data_location: EXTERNAL
}

function encodeValueInfo<T>(value: ValueInfoDef): ProtoWriter<T> {
  const shape = new ProtoWriter<T>();
  for (const dim of value.dims) {
    const dimension = new ProtoWriter<T>();
    if (typeof dim === "number") dimension.int(1, dim);
    else dimension.string(2, dim);
    shape.message(1, dimension);
  }
  const tensorType = new ProtoWriter<T>().int(1, value.elemType).message(2, shape);
  const type = new ProtoWriter<T>().message(1, tensorType);
  return new ProtoWriter<T>().string(1, value.name).message(2, type);
}

/**
 * Incremental construction of an ONNX graph: nodes, weight initializers, and constants deduplicated by
 * value (a constant's name spells its value, so equal constants share one initializer).
 */
import { float32ToFloat16Bits } from "./float16.js";
import { CONTRIB_DOMAIN, DataType, type AttributeDef, type NodeDef, type TensorDef } from "./onnx_model.js";

export class GraphBuilder<T> {
  readonly nodes: NodeDef[] = [];
  readonly initializers: TensorDef<T>[] = [];
  private readonly names = new Set<string>();
  private readonly constants = new Set<string>();

  /** Adds a node producing one output called `output`, and returns that name. */
  op(opType: string, inputs: readonly string[], output: string, attributes: readonly AttributeDef[] = []): string {
    this.claim(output);
    this.nodes.push({ name: output, opType, inputs, outputs: [output], attributes });
    return output;
  }

  /** Adds a node with several outputs (e.g. Split); an output named "" is one the graph does not use. */
  multiOutputOp(
    opType: string,
    inputs: readonly string[],
    outputs: readonly string[],
    attributes: readonly AttributeDef[],
    domain?: string,
  ): void {
    for (const output of outputs) if (output !== "") this.claim(output);
    this.nodes.push({ name: outputs[0], opType, inputs, outputs, attributes, ...(domain ? { domain } : {}) });
  }

  /** An onnxruntime contrib operator (com.microsoft); returns its outputs. */
  contrib(opType: string, inputs: readonly string[], outputs: readonly string[], attributes: readonly AttributeDef[]): readonly string[] {
    this.multiOutputOp(opType, inputs, outputs, attributes, CONTRIB_DOMAIN);
    return outputs;
  }

  initializer(tensor: TensorDef<T>): string {
    this.claim(tensor.name);
    this.initializers.push(tensor);
    return tensor.name;
  }

  /** An int64 constant; `dims` defaults to a 1-D tensor, `[]` makes a scalar. */
  int64(values: readonly number[], dims: readonly number[] = [values.length]): string {
    const bytes = new Uint8Array(values.length * 8);
    const view = new DataView(bytes.buffer);
    values.forEach((value, i) => view.setBigInt64(i * 8, BigInt(value), true));
    return this.constant(DataType.INT64, dims, bytes, `const.i64[${dims}](${values})`);
  }

  /** A float32 constant; `dims` defaults to a 1-D tensor, `[]` makes a scalar. */
  float32(values: ArrayLike<number>, dims: readonly number[] = [values.length], name?: string): string {
    const floats = Float32Array.from(values);
    const bytes = new Uint8Array(floats.length * 4);
    const view = new DataView(bytes.buffer);
    floats.forEach((value, i) => view.setFloat32(i * 4, value, true));
    return this.constant(DataType.FLOAT, dims, bytes, name ?? `const.f32[${dims}](${Array.from(floats)})`);
  }

  /** The int8 scalar 0 (the zero point of symmetric int8 weights). */
  int8Zero(): string {
    return this.constant(DataType.INT8, [], new Uint8Array(1), "const.i8[](0)");
  }

  /** A float16 constant from float32 values (rounded to nearest). */
  float16(values: ArrayLike<number>, dims: readonly number[], name: string): string {
    const bits = Uint16Array.from(Array.from(values, (value) => float32ToFloat16Bits(value)));
    return this.constant(DataType.FLOAT16, dims, new Uint8Array(bits.buffer), name);
  }

  private constant(dataType: DataType, dims: readonly number[], data: Uint8Array, name: string): string {
    if (this.constants.has(name)) return name;
    this.constants.add(name);
    return this.initializer({ name, dataType, dims, data });
  }

  private claim(name: string): void {
    if (this.names.has(name)) throw new Error(`graph: the value name ${name} is defined twice`);
    this.names.add(name);
  }
}

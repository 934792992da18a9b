/**
 * Key rotation as a small ONNX graph, for caches that live on a device (WebGPU buffers): the two moves of the
 * sink cache that need arithmetic, done where the cache lives instead of on the CPU.
 *
 * - The sink shift: the pristine sink keys rotated by the evicted count (input: the pristine copy, whole).
 * - The compaction rotation: the window's keys rotated back by the evicted count (input: the key buffer,
 *   with `start`/`length` picking the window's slots out of it).
 *
 * Either output is a fresh tensor of just the rotated slots, [rows, slots, head_dim]; moving its rows into
 * the cache buffer is a plain copy. The result matches `KeyRotation.apply` (and `rotateRows` for float16) to float32 precision: see
 * `keyRotationGraph` for how the angles are computed and how far the results may differ.
 */
import type { RopeSpec } from "../positions/rope.js";
import { GraphBuilder } from "./graph_builder.js";
import { DataType, encodeModel, type AttributeDef, type GraphDef, type ValueInfoDef } from "./onnx_model.js";

/** Input and output names of the key rotation graphs. */
export const KEY_ROTATION_IO = {
  /**
   * [rows, slots, head_dim] in the KV type. Rows are independent (batch * kv_heads, or layers * that when
   * several layers' keys share one buffer); every slot of every row turns by the same distance.
   */
  keys: "keys",
  /** int64 scalar: positions to rotate by, negative to rotate back. */
  distance: "distance",
  /** int64 scalars of the slice variant: the first slot to rotate and how many (within the buffer's slots). */
  start: "start",
  length: "length",
  /** [rows, slots (or `length`), head_dim] in the KV type. */
  rotated: "rotated",
} as const;

/**
 * The largest |distance| the graphs rotate by as `KeyRotation` does: 2^24, up to which the distance is exact
 * in float32 (past it, it rounds, and so does the angle).
 */
export const KEY_ROTATION_MAX_DISTANCE = 2 ** 24;

/** Significant bits of each distance piece and each exact frequency part: half of float32's 24. */
const PART_BITS = 12;
/** Frequency parts: two exact ones of PART_BITS bits, and the float32 rest. */
const PARTS = 3;

export interface KeyRotationGraphOptions {
  /** The rotation cached keys carry, as the slot rule holds it (frequencies as the model's graph uses them). */
  rotation: { spec: RopeSpec; inverse_frequencies: Float32Array };
  kv_type: "float32" | "float16";
  /**
   * Also take `start` and `length`, and rotate only slots [start, start + length) of `keys` (the output has
   * `length` slots). Lets compaction read the window straight out of the cache buffer.
   */
  slice?: boolean;
}

const intAttribute = (name: string, value: number): AttributeDef => ({ name, kind: "int", value });

/**
 * The graph: `rotated` = `keys` rotated by `distance` positions, the rotary dims in the spec's pair layout,
 * the remaining dims copied bit for bit. Float16 keys are rotated in float32 and rounded once.
 *
 * No attention factor: cached keys already carry it from their first rotation, and moving them is a pure
 * rotation (as `KeyRotation` does it); scaling again would compound it at every move.
 *
 * Angles. `KeyRotation` takes cos/sin of distance * inverse_frequency in float64. In float32 that product
 * alone would be off by up to half an ulp of the angle (2.4e-4 rad at 4096 positions), so the graph reduces
 * it exactly instead: each frequency over 2π, in turns, is split at build time into two parts of 12
 * significant bits and a float32 rest, and the distance in the graph into two 12-bit pieces. A piece times
 * a 12-bit part is exact in float32, and so is taking its whole turns away (x - floor(x + 0.5)); only the
 * two small products with the rest and the sums of the reduced terms (each within a turn) round. This holds
 * for every |distance| up to KEY_ROTATION_MAX_DISTANCE (2^24). Every step is exact or correctly rounded float32
 * arithmetic, so nothing relies on the provider keeping extra precision, only on its Cos and Sin on [-π, π]
 * (onnxruntime's CPU kernels are within a few ulps there; WGSL itself only promises 2^-11 absolute).
 *
 * Differences from `KeyRotation`: the angle is a few 1e-7 rad off its float64 value, and the pair
 * arithmetic is float32 (each product rounded) where the CPU works in float64 and rounds once. With
 * onnxruntime's CPU provider, every rotated value is within 4.7e-7 of its pair's magnitude (sqrt(x² + y²))
 * of the CPU's. Where x*cos and y*sin cancel that is a large error relative to the value itself; float16
 * caches mostly round both to the same bits, rarely one ulp apart, and several ulps only for such values.
 */
export function keyRotationGraph(options: KeyRotationGraphOptions): GraphDef {
  const { spec, inverse_frequencies: frequencies } = options.rotation;
  const { head_dim: headDim, rotary_dim: rotaryDim, layout } = spec;
  const half = rotaryDim / 2;
  if (!Number.isInteger(half) || half < 1 || rotaryDim > headDim) {
    throw new Error(`key rotation: rotary_dim ${rotaryDim} must be even, positive and at most head_dim ${headDim}`);
  }
  if (frequencies.length !== half) {
    throw new Error(`key rotation: ${frequencies.length} inverse frequencies for rotary_dim ${rotaryDim} (expected ${half})`);
  }
  const bad = frequencies.findIndex((frequency) => !Number.isFinite(frequency));
  if (bad >= 0) throw new Error(`key rotation: inverse frequency ${bad} is ${frequencies[bad]}`);

  const g = new GraphBuilder<never>();
  const kvType = options.kv_type === "float32" ? DataType.FLOAT : DataType.FLOAT16;
  const { keys, distance, start, length, rotated } = KEY_ROTATION_IO;

  let source: string = keys;
  if (options.slice) {
    const toVector = (scalar: string) => g.op("Reshape", [scalar, g.int64([1])], `${scalar}.vector`);
    const first = toVector(start);
    const end = g.op("Add", [first, toVector(length)], "end.vector");
    source = g.op("Slice", [keys, first, end, g.int64([1])], "keys.slice");
  }

  const { cos, sin } = angleTables(g, frequencies);
  // Per dim of the rotating part: its pair's cos, and its pair's sin with the sign of the formula
  // (first' = first * cos - second * sin, second' = second * cos + first * sin).
  const frequencyOf = new Array<number>(rotaryDim);
  const partner = new Array<number>(rotaryDim);
  const sign = new Array<number>(rotaryDim);
  for (let i = 0; i < half; i++) {
    const [first, second] = layout === "rotate_half" ? [i, i + half] : [2 * i, 2 * i + 1];
    frequencyOf[first] = frequencyOf[second] = i;
    partner[first] = second;
    partner[second] = first;
    sign[first] = -1;
    sign[second] = 1;
  }
  const axis0 = [intAttribute("axis", 0)];
  const cosPerDim = g.op("Gather", [cos, g.int64(frequencyOf)], "cos.per_dim", axis0);
  const sinPerDim = g.op("Mul", [g.op("Gather", [sin, g.int64(frequencyOf)], "sin.per_dim", axis0), g.float32(sign)], "sin.signed");

  let rotating = source;
  let passing: string | undefined;
  if (rotaryDim < headDim) {
    // Split before any cast, so the passing dims are copied untouched (float16 bits included).
    rotating = "keys.rotating";
    passing = "keys.passing";
    g.multiOutputOp("Split", [source, g.int64([rotaryDim, headDim - rotaryDim])], [rotating, passing], [intAttribute("axis", 2)]);
  }
  if (kvType === DataType.FLOAT16) rotating = g.op("Cast", [rotating], "keys.rotating.float32", [intAttribute("to", DataType.FLOAT)]);
  const partners = g.op("Gather", [rotating, g.int64(partner)], "keys.partners", [intAttribute("axis", 2)]);
  let result = g.op(
    "Add",
    [g.op("Mul", [rotating, cosPerDim], "keys.times_cos"), g.op("Mul", [partners, sinPerDim], "keys.partners_times_sin")],
    passing === undefined && kvType === DataType.FLOAT ? rotated : "keys.rotated",
  );
  if (kvType === DataType.FLOAT16) {
    result = g.op("Cast", [result], passing === undefined ? rotated : "keys.rotated.float16", [intAttribute("to", DataType.FLOAT16)]);
  }
  if (passing !== undefined) g.op("Concat", [result, passing], rotated, [intAttribute("axis", 2)]);

  const slots = options.slice ? "slice_length" : "slots";
  const inputs: ValueInfoDef[] = [
    { name: keys, elemType: kvType, dims: ["rows", "slots", headDim] },
    { name: distance, elemType: DataType.INT64, dims: [] },
  ];
  if (options.slice) {
    inputs.push({ name: start, elemType: DataType.INT64, dims: [] }, { name: length, elemType: DataType.INT64, dims: [] });
  }
  return {
    name: options.slice ? "key_slice_rotation" : "key_rotation",
    nodes: g.nodes,
    initializers: g.initializers,
    inputs,
    outputs: [{ name: rotated, elemType: kvType, dims: ["rows", slots, headDim] }],
  };
}

/** The model bytes of `keyRotationGraph(options)`, for `InferenceSession.create`. */
export function buildKeyRotationOnnx(options: KeyRotationGraphOptions): Uint8Array {
  const chunks = encodeModel(keyRotationGraph(options));
  const model = new Uint8Array(chunks.reduce((total, chunk) => total + chunk.byteLength, 0));
  let offset = 0;
  for (const chunk of chunks) {
    // Every tensor of this graph is inline bytes, so no chunk is deferred.
    if (!(chunk instanceof Uint8Array)) throw new Error("key rotation: unexpected deferred tensor data");
    model.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return model;
}

/**
 * cos and sin [half] of distance * frequency, with the angle reduced exactly (see `keyRotationGraph`).
 * In turns (frequency / 2π), the distance is split into a high and a low piece of 12 significant bits and
 * each frequency into two 12-bit parts and a float32 rest (`frequencyParts`): every piece times a 12-bit
 * part is exact in float32, and only the two products with the rest round.
 */
function angleTables(g: GraphBuilder<never>, frequencies: Float32Array): { cos: string; sin: string } {
  const half = frequencies.length;
  const parts = Array.from({ length: PARTS }, () => new Array<number>(half));
  for (let i = 0; i < half; i++) {
    frequencyParts(frequencies[i] / (2 * Math.PI)).forEach((part, k) => (parts[k][i] = part));
  }
  // Exact for |distance| <= 2^24; high = floor(d / 2^12) * 2^12 and low = d - high in [0, 2^12) are exact too.
  const d = g.op("Cast", [KEY_ROTATION_IO.distance], "distance.float", [intAttribute("to", DataType.FLOAT)]);
  const pieceScale = 2 ** PART_BITS;
  const highCount = g.op("Floor", [g.op("Mul", [d, g.float32([1 / pieceScale], [])], "distance.scaled")], "distance.high_count");
  const high = g.op("Mul", [highCount, g.float32([pieceScale], [])], "distance.high");
  const low = g.op("Sub", [d, high], "distance.low");
  const vector = (x: string) => g.op("Reshape", [x, g.int64([1])], `${x}.vector`);
  const pieces = g.op("Concat", [vector(high), vector(low)], "distance.pieces", [intAttribute("axis", 0)]);

  // The six products, coarse to fine, so that the sums of exact ones stay exact as long as they can.
  const terms: readonly (readonly [piece: 0 | 1, part: number])[] = [[0, 0], [0, 1], [1, 0], [0, 2], [1, 1], [1, 2]];
  const termPieces = g.op("Gather", [pieces, g.int64(terms.map(([piece]) => piece), [terms.length, 1])], "terms.pieces", [intAttribute("axis", 0)]);
  const termParts = g.float32(terms.flatMap(([, part]) => parts[part]), [terms.length, half], "terms.turns_per_position");
  const halfTurn = g.float32([0.5], []);
  /** x less a whole number of turns near it: exact (|result| <= 1 shares x's last bit), and within half a turn while |x| < 2^22. */
  const fraction = (x: string, name: string) =>
    g.op("Sub", [x, g.op("Floor", [g.op("Add", [x, halfTurn], `${name}.plus_half`)], `${name}.whole`)], name);
  const reduced = fraction(g.op("Mul", [termPieces, termParts], "terms.turns"), "terms.fraction"); // [terms, half]
  const termNames = terms.map((_, k) => `terms.fraction.${k}`);
  g.multiOutputOp("Split", [reduced, g.int64(terms.map(() => 1))], termNames, [intAttribute("axis", 0)]);
  let turns = termNames[0];
  for (let k = 1; k < terms.length; k++) {
    // Two values within a turn sum within two, so this add rounds by at most 2^-24 turns (mostly not at all);
    // reducing again keeps the next sum as small.
    turns = fraction(g.op("Add", [turns, termNames[k]], `turns.sum${k}`), `turns.sum${k}.fraction`);
  }
  const angle = g.op("Mul", [g.op("Reshape", [turns, g.int64([half])], "turns"), g.float32([2 * Math.PI], [])], "angle");
  return { cos: g.op("Cos", [angle], "cos"), sin: g.op("Sin", [angle], "sin") };
}

/**
 * `turns` as PARTS float32 values summing to it: PARTS - 1 of PART_BITS significant bits each (so that a
 * distance piece of PART_BITS bits times any of them is exact in float32), then the float32 rest.
 */
export function frequencyParts(turns: number): number[] {
  const parts: number[] = [];
  let rest = turns;
  for (let k = 0; k < PARTS - 1; k++) {
    if (rest === 0) {
      parts.push(0);
      continue;
    }
    // Scale so that the leading PART_BITS bits are the integer part; powers of two keep the scaling exact.
    const scale = 2 ** (PART_BITS - 1 - Math.floor(Math.log2(Math.abs(rest))));
    const part = Math.round(rest * scale) / scale;
    parts.push(part);
    rest -= part;
  }
  parts.push(Math.fround(rest));
  return parts;
}

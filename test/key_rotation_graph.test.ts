/**
 * The key rotation graphs (src/onnx/key_rotation_graph.ts), run by onnxruntime-node's CPU provider, against
 * the CPU rotation the sink cache uses (KeyRotation, rotateRows): both pair layouts, partial rotary, scaled
 * RoPE, distances of either sign up to the exact-reduction limit, float32 and float16 caches, the whole and
 * the slice variant, and the two cache moves (sink shift, compaction) written as graph + row copies.
 *
 * Tolerances. float32: every rotated value within 1e-6 of the magnitude of its rotating pair (a rotation's
 * own scale; an elementwise relative error is unbounded where x*cos and y*sin cancel), passed-through dims
 * bit-equal. float16: mostly equal bits, rarely one ulp apart: the graph's float32 value is a few float32
 * ulps (of the pair's magnitude) from the CPU's, and rounding both to float16 differs only when a float16
 * rounding boundary lies between them. More than one ulp only where the value is far smaller than its pair,
 * so that those few float32 ulps of the pair are several float16 ulps of the value; there the float32
 * bound still holds. The CPU does the pair arithmetic in float64 and rounds once, so it has no such error.
 */
import { describe, it, type TestContext } from "node:test";
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { rotateRows } from "../src/cache/kv_data.js";
import { float16ToFloat32Table, float32ToFloat16Bits } from "../src/onnx/float16.js";
import { KEY_ROTATION_MAX_DISTANCE, buildKeyRotationOnnx, frequencyParts, type KeyRotationGraphOptions } from "../src/onnx/key_rotation_graph.js";
import { KeyRotation, ropeInverseFrequencies, type RopeSpec } from "../src/positions/rope.js";
import { gaussian, seededRandom } from "./support/random.js";

const FLOAT32_TOLERANCE = 1e-6;

type Rotation = KeyRotationGraphOptions["rotation"];

const rotationOf = (spec: RopeSpec): Rotation => ({ spec, inverse_frequencies: ropeInverseFrequencies(spec) });

const SPECS: Record<string, RopeSpec> = {
  "rotate_half, full rotary": { layout: "rotate_half", head_dim: 64, rotary_dim: 64, theta: 10000 },
  "interleaved, full rotary": { layout: "interleaved", head_dim: 32, rotary_dim: 32, theta: 10000 },
  "rotate_half, partial rotary": { layout: "rotate_half", head_dim: 64, rotary_dim: 16, theta: 10000 },
  "interleaved, partial rotary": { layout: "interleaved", head_dim: 48, rotary_dim: 24, theta: 10000 },
  "linear scaling": { layout: "rotate_half", head_dim: 32, rotary_dim: 32, theta: 10000, scaling: { rope_type: "linear", factor: 4 } },
  "llama3 scaling": {
    layout: "rotate_half",
    head_dim: 64,
    rotary_dim: 64,
    theta: 500000,
    scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
  },
  "yarn with an attention factor": {
    layout: "interleaved",
    head_dim: 32,
    rotary_dim: 32,
    theta: 10000,
    scaling: { rope_type: "yarn", factor: 4, original_max_position_embeddings: 4096, attention_factor: 1.3 },
  },
};

/** Short and long, both signs, either side of the distance's 12-bit split, up to the largest supported. */
const DISTANCES = [1, -1, 7, -5, 300, -1023, 4095, 4096, -4097, -8191, 70001, -131071, 524289, -4194309, KEY_ROTATION_MAX_DISTANCE - 1, -KEY_ROTATION_MAX_DISTANCE];

function randomKeys(seed: number, length: number): Float32Array {
  const next = seededRandom(seed);
  // Cached keys are post-RoPE projections: a few units in size, some dims much larger than others.
  return Float32Array.from({ length }, (_, i) => gaussian(next) * (i % 7 === 0 ? 8 : 1.5));
}

const toFloat16 = (values: Float32Array) => Uint16Array.from(values, (value) => float32ToFloat16Bits(value));

const sessions = new Map<string, Promise<ort.InferenceSession>>();
function session(options: KeyRotationGraphOptions): Promise<ort.InferenceSession> {
  const key = JSON.stringify({ ...options, rotation: { spec: options.rotation.spec, f: Array.from(options.rotation.inverse_frequencies) } });
  let made = sessions.get(key);
  if (!made) {
    made = ort.InferenceSession.create(buildKeyRotationOnnx(options));
    sessions.set(key, made);
  }
  return made;
}

const scalar = (value: number) => new ort.Tensor("int64", BigInt64Array.of(BigInt(value)), []);

/** Runs a graph on keys [rows, slots, head_dim] and returns the rotated data and its dims. */
async function runGraph(
  options: KeyRotationGraphOptions,
  keys: Float32Array | Uint16Array,
  dims: readonly [number, number, number],
  distance: number,
  slice?: { start: number; length: number },
): Promise<{ data: Float32Array | Uint16Array; dims: readonly number[] }> {
  const feeds: Record<string, ort.Tensor> = {
    keys: keys instanceof Float32Array ? new ort.Tensor("float32", keys, dims) : new ort.Tensor("float16", keys, dims),
    distance: scalar(distance),
  };
  if (slice) {
    feeds.start = scalar(slice.start);
    feeds.length = scalar(slice.length);
  }
  const { rotated } = await (await session(options)).run(feeds);
  assert.equal(rotated.type, options.kv_type);
  return { data: rotated.data as Float32Array | Uint16Array, dims: rotated.dims };
}

/** The magnitude of the rotating pair each dim belongs to (0 for dims that pass through). */
function pairMagnitudes(spec: RopeSpec, source: Float32Array, vectors: number): Float32Array {
  const { head_dim, rotary_dim, layout } = spec;
  const half = rotary_dim / 2;
  const out = new Float32Array(source.length);
  for (let v = 0; v < vectors; v++) {
    for (let i = 0; i < half; i++) {
      const [a, b] = layout === "rotate_half" ? [i, i + half] : [2 * i, 2 * i + 1];
      const magnitude = Math.hypot(source[v * head_dim + a], source[v * head_dim + b]);
      out[v * head_dim + a] = out[v * head_dim + b] = magnitude;
    }
  }
  return out;
}

/**
 * The largest error of `actual` against `expected`, in units of the pair magnitude; passed-through dims
 * (magnitude 0 here) must be bit-equal, else Infinity.
 */
function float32Error(actual: Float32Array, expected: Float32Array, magnitudes: Float32Array): number {
  assert.equal(actual.length, expected.length);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) {
    if (magnitudes[i] === 0) {
      if (!Object.is(actual[i], expected[i])) return Infinity;
      continue;
    }
    const error = Math.abs(actual[i] - expected[i]) / magnitudes[i];
    if (!(error <= worst)) worst = Number.isNaN(error) ? Infinity : error;
  }
  return worst;
}

/** float16 bits as an ordered integer line, so adjacent values (across zero too) are one apart. */
const orderedHalf = (bits: number) => (bits & 0x8000 ? -(bits & 0x7fff) : bits);

/**
 * How float16 results differ: how many values, the largest gap in ulps, and how many are more than one ulp
 * apart. Those must be where the value is far smaller than its pair (x*cos and y*sin cancel), so a float32
 * error of the pair's size is many float16 ulps of the value: they must still be within FLOAT32_TOLERANCE of
 * the pair magnitude, and the largest such error is returned as `cancelledError`.
 */
function float16Difference(
  actual: Uint16Array,
  expected: Uint16Array,
  magnitudes: Float32Array,
): { differing: number; maxUlps: number; beyondOneUlp: number; cancelledError: number } {
  assert.equal(actual.length, expected.length);
  const table = float16ToFloat32Table();
  let [differing, maxUlps, beyondOneUlp, cancelledError] = [0, 0, 0, 0];
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] === expected[i]) continue;
    differing++;
    const ulps = Math.abs(orderedHalf(actual[i]) - orderedHalf(expected[i]));
    maxUlps = Math.max(maxUlps, ulps);
    if (ulps <= 1) continue;
    beyondOneUlp++;
    const error = magnitudes[i] === 0 ? Infinity : Math.abs(table[actual[i]] - table[expected[i]]) / magnitudes[i];
    cancelledError = Math.max(cancelledError, Number.isNaN(error) ? Infinity : error);
  }
  return { differing, maxUlps, beyondOneUlp, cancelledError };
}

/** Pair magnitudes of float16 keys, from their float32 values. */
const halfMagnitudes = (spec: RopeSpec, keys: Uint16Array, vectors: number) =>
  pairMagnitudes(spec, Float32Array.from(keys, (bits) => float16ToFloat32Table()[bits]), vectors);

/** The CPU rotation of every head vector of `keys`, as the sink cache does it. */
function cpuRotate(rotation: Rotation, keys: Float32Array | Uint16Array, headDim: number, distance: number): Float32Array | Uint16Array {
  const vectors = keys.length / headDim;
  const turn = new KeyRotation(rotation.spec, rotation.inverse_frequencies, distance);
  const out = keys instanceof Float32Array ? new Float32Array(keys.length) : new Uint16Array(keys.length);
  rotateRows(turn, keys, 0, out, 0, vectors, new Float32Array(keys.length));
  return out;
}

describe("key rotation graphs against the CPU rotation", () => {
  const rows = 6;
  const slots = 5;

  for (const [name, spec] of Object.entries(SPECS)) {
    it(`float32, ${name}: within ${FLOAT32_TOLERANCE} of each pair's magnitude, passed-through dims bit-equal`, async (t: TestContext) => {
      const rotation = rotationOf(spec);
      const options: KeyRotationGraphOptions = { rotation, kv_type: "float32" };
      const dims = [rows, slots, spec.head_dim] as const;
      const keys = randomKeys(spec.head_dim + spec.rotary_dim, rows * slots * spec.head_dim);
      const magnitudes = pairMagnitudes(spec, keys, rows * slots);
      let compared = 0;
      let worst = 0;
      for (const distance of DISTANCES) {
        const { data, dims: outDims } = await runGraph(options, keys, dims, distance);
        assert.deepEqual(outDims, dims);
        const error = float32Error(data as Float32Array, cpuRotate(rotation, keys, spec.head_dim, distance) as Float32Array, magnitudes);
        assert.ok(error <= FLOAT32_TOLERANCE, `distance ${distance}: error ${error} of the pair magnitude`);
        worst = Math.max(worst, error);
        compared += data.length;
      }
      assert.equal(compared, DISTANCES.length * keys.length);
      t.diagnostic(`${compared} values, largest error ${worst.toExponential(2)} of the pair magnitude`);
    });

    it(`float16, ${name}: equal bits or one ulp apart, more only where the pair cancels`, async (t: TestContext) => {
      const rotation = rotationOf(spec);
      const options: KeyRotationGraphOptions = { rotation, kv_type: "float16" };
      const dims = [rows, slots, spec.head_dim] as const;
      const keys = toFloat16(randomKeys(3 * spec.head_dim, rows * slots * spec.head_dim));
      const magnitudes = halfMagnitudes(spec, keys, rows * slots);
      let [compared, differing, beyondOneUlp, maxUlps, cancelledError] = [0, 0, 0, 0, 0];
      for (const distance of DISTANCES) {
        const { data } = await runGraph(options, keys, dims, distance);
        assert.ok(data instanceof Uint16Array);
        const difference = float16Difference(data, cpuRotate(rotation, keys, spec.head_dim, distance) as Uint16Array, magnitudes);
        assert.ok(difference.cancelledError <= FLOAT32_TOLERANCE, `distance ${distance}: ${difference.cancelledError} of the pair magnitude`);
        differing += difference.differing;
        beyondOneUlp += difference.beyondOneUlp;
        maxUlps = Math.max(maxUlps, difference.maxUlps);
        cancelledError = Math.max(cancelledError, difference.cancelledError);
        compared += data.length;
      }
      assert.equal(compared, DISTANCES.length * keys.length);
      // A few float32 ulps in a float16 ulp (8192 of them) make a differing rounding a rare event, and a
      // cancelling pair rarer still.
      assert.ok(differing <= compared / 200, `${differing} of ${compared} values differ`);
      assert.ok(beyondOneUlp <= compared / 2000, `${beyondOneUlp} of ${compared} values more than one ulp apart`);
      t.diagnostic(
        `${compared} values: ${differing - beyondOneUlp} one ulp apart, ${beyondOneUlp} more (at most ${maxUlps} ulps, ${cancelledError.toExponential(2)} of the pair magnitude)`,
      );
    });
  }

  it("are told apart from a rotation by one position more and from the other pair layout", async () => {
    // The comparisons above are only worth something if a near miss fails them.
    const spec = SPECS["rotate_half, full rotary"];
    const rotation = rotationOf(spec);
    const keys = randomKeys(5, rows * slots * spec.head_dim);
    const magnitudes = pairMagnitudes(spec, keys, rows * slots);
    const { data } = await runGraph({ rotation, kv_type: "float32" }, keys, [rows, slots, spec.head_dim], 300);
    const offByOne = float32Error(data as Float32Array, cpuRotate(rotation, keys, spec.head_dim, 301) as Float32Array, magnitudes);
    assert.ok(offByOne > 1e-2, `off by one position: error ${offByOne}`);
    const interleaved = rotationOf({ ...spec, layout: "interleaved" });
    const otherLayout = float32Error(data as Float32Array, cpuRotate(interleaved, keys, spec.head_dim, 300) as Float32Array, magnitudes);
    assert.ok(otherLayout > 1e-2, `other layout: error ${otherLayout}`);

    const halfKeys = toFloat16(keys);
    const half = await runGraph({ rotation, kv_type: "float16" }, halfKeys, [rows, slots, spec.head_dim], 300);
    const halfOffByOne = float16Difference(half.data as Uint16Array, cpuRotate(rotation, halfKeys, spec.head_dim, 301) as Uint16Array, halfMagnitudes(spec, halfKeys, rows * slots));
    assert.ok(halfOffByOne.differing > keys.length / 2 && halfOffByOne.cancelledError > 1e-2, `float16 off by one: ${JSON.stringify(halfOffByOne)}`);
  });

  it("distance 0 returns the keys unchanged, and d then -d returns them to within float32 rounding", async () => {
    const spec = SPECS["interleaved, partial rotary"];
    const options: KeyRotationGraphOptions = { rotation: rotationOf(spec), kv_type: "float32" };
    const dims = [rows, slots, spec.head_dim] as const;
    const keys = randomKeys(17, rows * slots * spec.head_dim);
    const same = await runGraph(options, keys, dims, 0);
    assert.deepEqual(Array.from(same.data), Array.from(keys));
    const there = await runGraph(options, keys, dims, 4321);
    const back = await runGraph(options, there.data, dims, -4321);
    const error = float32Error(back.data as Float32Array, keys, pairMagnitudes(spec, keys, rows * slots));
    assert.ok(error <= 2 * FLOAT32_TOLERANCE, `round trip error ${error}`);
  });

  it("refuses a rotary_dim that is odd or past head_dim, and frequencies that do not fit it", () => {
    const spec = SPECS["rotate_half, partial rotary"];
    const frequencies = ropeInverseFrequencies(spec);
    const build = (change: Partial<RopeSpec>, inverse_frequencies = frequencies) =>
      () => buildKeyRotationOnnx({ rotation: { spec: { ...spec, ...change }, inverse_frequencies }, kv_type: "float32" });
    assert.throws(build({ rotary_dim: 15 }), /must be even/);
    assert.throws(build({ rotary_dim: 80, head_dim: 64 }, new Float32Array(40)), /at most head_dim/);
    assert.throws(build({}, frequencies.subarray(1)), /expected 8/);
    assert.throws(build({}, Float32Array.from(frequencies, (f, i) => (i === 3 ? NaN : f))), /inverse frequency 3 is NaN/);
  });

  it("splits every frequency into parts that 12-bit distance pieces multiply exactly", () => {
    // The pieces' extremes: the low piece below 2^12, the high one a 12-bit multiple of 2^12.
    const pieces = [4095, 4095 * 4096, KEY_ROTATION_MAX_DISTANCE];
    let checked = 0;
    for (const spec of Object.values(SPECS)) {
      for (const frequency of ropeInverseFrequencies(spec)) {
        const turns = frequency / (2 * Math.PI);
        const parts = frequencyParts(turns);
        const rest = parts[parts.length - 1];
        assert.ok(Math.abs(parts.reduce((a, b) => a + b, 0) - turns) <= 2 ** -24 * Math.abs(rest) + 2 ** -52 * turns);
        // The rest is small enough that its rounded product with the largest distance is within 2^-26 turns.
        assert.ok(KEY_ROTATION_MAX_DISTANCE * Math.abs(rest) * 2 ** -24 <= 2 ** -26, `rest ${rest} of ${turns}`);
        for (const part of parts) assert.equal(Math.fround(part), part);
        for (const part of parts.slice(0, -1)) {
          for (const piece of pieces) {
            // Exact in float32: the float64 product (exact here) survives rounding to float32.
            const product = piece * part;
            assert.equal(Math.fround(product), product, `${piece} * ${part}`);
            checked++;
          }
        }
      }
    }
    assert.ok(checked > 300);
  });
});

describe("the slice variant, and the cache moves it serves", () => {
  const spec: RopeSpec = { layout: "rotate_half", head_dim: 32, rotary_dim: 24, theta: 10000 };
  const rotation = rotationOf(spec);
  const D = spec.head_dim;

  for (const kv_type of ["float32", "float16"] as const) {
    it(`${kv_type}: rotates slots [start, start + length) of each row, and returns just those`, async () => {
      const [rows, slots, start, length, distance] = [4, 40, 9, 23, -13];
      const values = randomKeys(23, rows * slots * D);
      const keys = kv_type === "float32" ? values : toFloat16(values);
      const { data, dims } = await runGraph({ rotation, kv_type, slice: true }, keys, [rows, slots, D], distance, { start, length });
      assert.deepEqual(dims, [rows, length, D]);
      const picked = keys instanceof Float32Array ? new Float32Array(rows * length * D) : new Uint16Array(rows * length * D);
      for (let r = 0; r < rows; r++) picked.set(keys.subarray((r * slots + start) * D, (r * slots + start + length) * D), r * length * D);
      const expected = cpuRotate(rotation, picked, D, distance);
      if (expected instanceof Float32Array) {
        const error = float32Error(data as Float32Array, expected, pairMagnitudes(spec, picked as Float32Array, rows * length));
        assert.ok(error <= FLOAT32_TOLERANCE, `error ${error}`);
      } else {
        const difference = float16Difference(data as Uint16Array, expected, halfMagnitudes(spec, picked as Uint16Array, rows * length));
        assert.ok(difference.cancelledError <= FLOAT32_TOLERANCE, `${difference.cancelledError} of the pair magnitude`);
        assert.ok(difference.differing <= picked.length / 50, `${difference.differing} of ${picked.length} values differ`);
      }
    });
  }

  it("compaction as graph + row copies leaves a fixed buffer as the CPU compaction does", async () => {
    // A fixed key buffer [rows, fixed, D]: sinks | evicted | window | unused. Compaction rotates the window
    // back by the evicted count and moves it down to just after the sinks.
    const [rows, fixed, sinks, evicted, window] = [3, 30, 4, 7, 15];
    const windowStart = sinks + evicted;
    const buffer = randomKeys(31, rows * fixed * D);

    const cpu = buffer.slice();
    const turn = new KeyRotation(rotation.spec, rotation.inverse_frequencies, -evicted);
    for (let r = 0; r < rows; r++) {
      rotateRows(turn, cpu, (r * fixed + windowStart) * D, cpu, (r * fixed + sinks) * D, window, new Float32Array(0));
    }

    const device = buffer.slice();
    const { data } = await runGraph({ rotation, kv_type: "float32", slice: true }, buffer, [rows, fixed, D], -evicted, {
      start: windowStart,
      length: window,
    });
    for (let r = 0; r < rows; r++) device.set(data.subarray(r * window * D, (r + 1) * window * D), (r * fixed + sinks) * D);

    const magnitudes = new Float32Array(device.length);
    for (let r = 0; r < rows; r++) {
      magnitudes.set(pairMagnitudes(spec, buffer.subarray((r * fixed + windowStart) * D, (r * fixed + windowStart + window) * D), window), (r * fixed + sinks) * D);
    }
    // Slots outside the moved window (sinks, the stale tail) are untouched by both, so bit-equal.
    const error = float32Error(device, cpu, magnitudes);
    assert.ok(error <= FLOAT32_TOLERANCE, `error ${error}`);
  });

  it("the sink shift as graph + row copies: pristine sinks rotated into the head of each row", async () => {
    const [rows, fixed, sinks, distance] = [3, 20, 4, 9];
    const pristine = toFloat16(randomKeys(41, rows * sinks * D));
    const buffer = toFloat16(randomKeys(43, rows * fixed * D));

    const cpu = buffer.slice();
    const turn = new KeyRotation(rotation.spec, rotation.inverse_frequencies, distance);
    // The CPU keeps its pristine copy in float32; widened float16 is exactly what that copy holds.
    const table = float16ToFloat32Table();
    const pristine32 = Float32Array.from(pristine, (bits) => table[bits]);
    for (let r = 0; r < rows; r++) rotateRows(turn, pristine32, r * sinks * D, cpu, r * fixed * D, sinks, new Float32Array(sinks * D));

    const device = buffer.slice();
    const { data } = await runGraph({ rotation, kv_type: "float16" }, pristine, [rows, sinks, D], distance);
    for (let r = 0; r < rows; r++) device.set(data.subarray(r * sinks * D, (r + 1) * sinks * D), r * fixed * D);

    const magnitudes = new Float32Array(device.length);
    for (let r = 0; r < rows; r++) magnitudes.set(halfMagnitudes(spec, pristine.subarray(r * sinks * D, (r + 1) * sinks * D), sinks), r * fixed * D);
    const difference = float16Difference(device, cpu, magnitudes);
    assert.ok(difference.cancelledError <= FLOAT32_TOLERANCE, `${difference.cancelledError} of the pair magnitude`);
    assert.ok(difference.differing <= 4, `${difference.differing} values differ`);
    // Outside the sink slots both leave the buffer as it was.
    for (let r = 0; r < rows; r++) {
      const rest = (r * fixed + sinks) * D;
      assert.deepEqual(device.subarray(rest, (r + 1) * fixed * D), buffer.subarray(rest, (r + 1) * fixed * D));
    }
  });
});

/**
 * Checks src/positions/rope.ts against RoPE written out independently: the formulas in
 * test/support/reference/rope_formulas.ts (which the oracles now use) and values hard-coded here.
 *
 * The hard-coded values were computed with python3 in float64 (plain `math`, no torch) from a line-by-line
 * transcription of transformers' modeling_rope_utils.py (`_compute_*_parameters`, `get_mscale`,
 * `find_correction_dim/range`, `linear_ramp_factor`). Every test counts what it compared and asserts the
 * count, so none can pass by comparing nothing.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { KeyRotation, ropeAttentionFactor, ropeInverseFrequencies, type RopeScaling, type RopeSpec } from "../src/positions/rope.js";
import {
  formulaAttentionFactor,
  formulaInverseFrequencies,
  formulaInverseFrequenciesFloat32,
  yarnFindCorrectionRange,
  yarnLinearRampFactor,
  type RopeFormulaContext,
} from "./support/reference/rope_formulas.js";

/** src returns float32, so 1e-6 relative is a few float32 ulps. */
const FLOAT32_REL = 1e-6;
/** The float64 reference against the float64 python values. */
const FLOAT64_REL = 1e-12;

function assertClose(actual: number, expected: number, rel: number, label: string): void {
  assert.ok(Number.isFinite(actual), `${label}: got ${actual}`);
  assert.ok(Math.abs(actual - expected) <= rel * Math.abs(expected), `${label}: got ${actual}, expected ${expected} (rel ${rel})`);
}

/** Compares element-wise and returns how many values it compared. */
function compareAll(actual: ArrayLike<number>, expected: ArrayLike<number>, rel: number, label: string): number {
  assert.equal(actual.length, expected.length, `${label}: length`);
  for (let i = 0; i < expected.length; i++) assertClose(actual[i], expected[i], rel, `${label}[${i}]`);
  return expected.length;
}

function spec(head_dim: number, rotary_dim: number, theta: number, scaling?: RopeScaling, layout: RopeSpec["layout"] = "rotate_half"): RopeSpec {
  return { layout, head_dim, rotary_dim, theta, scaling };
}

interface HardCoded {
  name: string;
  rope: RopeSpec;
  /** Only dynamic NTK past the trained length needs one; src takes no sequence length, so such cases skip src. */
  context?: RopeFormulaContext;
  expected: number[];
  attention?: number;
}

const SHORT8 = [1, 1.125, 1.25, 1.375, 1.5, 1.625, 1.75, 1.875];
const LONG8 = [2, 5, 8, 11, 14, 17, 20, 23];
const DEFAULT16 = [
  1.0, 0.31622776601683794, 0.1, 0.03162277660168379, 0.01, 0.003162277660168379, 0.001, 0.00031622776601683794,
];
const YARN32_TRUNCATED = [
  1.0, 0.5623413251903491, 0.31622776601683794, 0.17782794100389226, 0.1, 0.056234132519034905, 0.028234621965789103,
  0.013972195364591537, 0.0067857142857142855, 0.003213379001087709, 0.001468200342221033, 0.0006350997892996153,
  0.00025, 0.00014058533129758727, 7.905694150420948e-5, 4.445698525097307e-5,
];
const LLAMA3_16 = [
  1.0, 0.19392274474868576, 0.03760603093086393, 0.0072926647372171085, 0.0005248461609929547, 3.428102195952591e-5,
  6.647869871181236e-6, 1.2891731721515574e-6,
];
const LLAMA3_SCALING: RopeScaling = {
  rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192,
};
const YARN_SCALING: RopeScaling = { rope_type: "yarn", factor: 4, original_max_position_embeddings: 4096 };
const LONGROPE = (use_long_factor: boolean, extra: { factor?: number; attention_factor?: number } = {}): RopeScaling => ({
  rope_type: "longrope", short_factor: SHORT8, long_factor: LONG8, original_max_position_embeddings: 4096,
  factor: extra.factor ?? 32, attention_factor: extra.attention_factor, use_long_factor,
});

const HARD_CODED: HardCoded[] = [
  { name: "default, full rotary (head 16, theta 1e4)", rope: spec(16, 16, 10000), expected: DEFAULT16, attention: 1 },
  // Partial rotary: the exponent uses rotary_dim, not head_dim.
  { name: "partial rotary_dim = head_dim / 2 (stablelm-like, head 32 / rotary 16)", rope: spec(32, 16, 10000), expected: DEFAULT16, attention: 1 },
  { name: "partial rotary_dim = head_dim / 4 (gpt_neox rotary_pct 0.25, head 32 / rotary 8)", rope: spec(32, 8, 10000), expected: [1.0, 0.1, 0.01, 0.001], attention: 1 },
  {
    name: "partial rotary 0.4 (phi, head 80 / rotary 32)",
    rope: spec(80, 32, 10000),
    expected: [
      1.0, 0.5623413251903491, 0.31622776601683794, 0.17782794100389226, 0.1, 0.056234132519034905, 0.03162277660168379,
      0.01778279410038923, 0.01, 0.005623413251903491, 0.003162277660168379, 0.001778279410038923, 0.001,
      0.0005623413251903491, 0.00031622776601683794, 0.00017782794100389227,
    ],
  },
  {
    name: "partial interleaved (gptj-like, head 32 / rotary 8, theta 500)",
    rope: spec(32, 8, 500, undefined, "interleaved"),
    expected: [1.0, 0.21147425268811282, 0.044721359549995794, 0.009457416090031758],
  },
  {
    name: "linear factor 4",
    rope: spec(16, 16, 10000, { rope_type: "linear", factor: 4 }),
    expected: [0.25, 0.07905694150420949, 0.025, 0.007905694150420948, 0.0025, 0.0007905694150420947, 0.00025, 7.905694150420948e-5],
    attention: 1,
  },
  {
    name: "dynamic factor 2, inside the trained length (implicit)",
    rope: spec(16, 16, 10000, { rope_type: "dynamic", factor: 2 }),
    expected: DEFAULT16,
    attention: 1,
  },
  {
    name: "dynamic factor 2, seq_len 1000 < max_pos 2048",
    rope: spec(16, 16, 10000, { rope_type: "dynamic", factor: 2 }),
    context: { sequence_length: 1000, max_position_embeddings: 2048 },
    expected: DEFAULT16,
    attention: 1,
  },
  {
    name: "dynamic factor 2, seq_len 4096 > max_pos 2048",
    rope: spec(16, 16, 10000, { rope_type: "dynamic", factor: 2 }),
    context: { sequence_length: 4096, max_position_embeddings: 2048 },
    expected: [
      1.0, 0.27029612569240363, 0.07305999556432365, 0.019747833744140873, 0.005337762951858991, 0.001442776645751933,
      0.000389976937586229, 0.00010540925533894597,
    ],
    attention: 1,
  },
  {
    name: "dynamic factor 4, partial (head 32 / rotary 8), seq_len 3000 > max_pos 2048",
    rope: spec(32, 8, 10000, { rope_type: "dynamic", factor: 4 }),
    context: { sequence_length: 3000, max_position_embeddings: 2048 },
    expected: [1.0, 0.07045464453290713, 0.004963856936258302, 0.0003497267759562842],
    attention: 1,
  },
  // theta 5e5, dim 16, 8192 / (1, 4): wavelengths 6.3, 32, 167, 862 (< 2048: kept), 4443 (smoothed), 22911+ (> 8192: / 8).
  { name: "llama3 (all three bands)", rope: spec(16, 16, 500000, LLAMA3_SCALING), expected: LLAMA3_16, attention: 1 },
  { name: "llama3, partial (head 64 / rotary 16)", rope: spec(64, 16, 500000, LLAMA3_SCALING), expected: LLAMA3_16, attention: 1 },
  // dim 32, 4096, beta 32 / 1: correction range 5.236 .. 11.257, truncated to 5 .. 12.
  { name: "yarn factor 4, truncated ramp 5..12", rope: spec(32, 32, 10000, YARN_SCALING), expected: YARN32_TRUNCATED, attention: 1.138629436111989 },
  { name: "yarn, partial (head 64 / rotary 32)", rope: spec(64, 32, 10000, YARN_SCALING), expected: YARN32_TRUNCATED, attention: 1.138629436111989 },
  {
    name: "yarn factor 4, truncate false (ramp 5.236..11.257)",
    rope: spec(32, 32, 10000, { ...YARN_SCALING, truncate: false }),
    expected: [
      1.0, 0.5623413251903491, 0.31622776601683794, 0.17782794100389226, 0.1, 0.056234132519034905, 0.02861360881198889,
      0.013875371073024076, 0.006556971521129435, 0.002986734511777551, 0.0012856320307266878, 0.0005014396573872045,
      0.00025, 0.00014058533129758727, 7.905694150420948e-5, 4.445698525097307e-5,
    ],
    attention: 1.138629436111989,
  },
  {
    name: "yarn beta_fast = beta_slow, truncate false (low == high, the +0.001 singularity guard)",
    rope: spec(32, 32, 10000, { ...YARN_SCALING, beta_fast: 8, beta_slow: 8, truncate: false }),
    expected: [
      1.0, 0.5623413251903491, 0.31622776601683794, 0.17782794100389226, 0.1, 0.056234132519034905, 0.03162277660168379,
      0.01778279410038923, 0.0025, 0.0014058533129758727, 0.0007905694150420947, 0.00044456985250973074, 0.00025,
      0.00014058533129758727, 7.905694150420948e-5, 4.445698525097307e-5,
    ],
    attention: 1.138629436111989,
  },
  {
    name: "yarn theta 1e6, factor 8, beta 64 / 0.5, attention_factor given 0.8",
    rope: spec(16, 16, 1000000, {
      rope_type: "yarn", factor: 8, original_max_position_embeddings: 32768, beta_fast: 64, beta_slow: 0.5, attention_factor: 0.8,
    }),
    expected: [
      1.0, 0.17782794100389226, 0.03162277660168379, 0.004393291603049602, 0.0005625000000000001, 6.112835472008797e-5,
      3.952847075210474e-6, 7.029266564879364e-7,
    ],
    attention: 0.8,
  },
  {
    name: "yarn range clamped to [0, dim - 1] (beta_fast 4096, beta_slow 1e-6)",
    rope: spec(16, 16, 10000, { rope_type: "yarn", factor: 4, original_max_position_embeddings: 2048, beta_fast: 4096, beta_slow: 1e-6 }),
    expected: [
      1.0, 0.30041637771599605, 0.09, 0.026879360111431223, 0.008, 0.0023717082451262844, 0.0007, 0.00020554804791094467,
    ],
    attention: 1.138629436111989,
  },
  {
    name: "yarn mscale 1 / mscale_all_dim 0.5",
    rope: spec(32, 32, 10000, { ...YARN_SCALING, mscale: 1, mscale_all_dim: 0.5 }),
    expected: YARN32_TRUNCATED,
    attention: 1.0648216253695715,
  },
  {
    name: "yarn mscale without mscale_all_dim is ignored (get_mscale(factor))",
    rope: spec(32, 32, 10000, { ...YARN_SCALING, mscale: 2 }),
    expected: YARN32_TRUNCATED,
    attention: 1.138629436111989,
  },
  {
    name: "longrope short factors, default attention sqrt(1 + ln 32 / ln 4096)",
    rope: spec(16, 16, 10000, LONGROPE(false)),
    expected: [
      1.0, 0.2810913475705226, 0.08, 0.02299838298304276, 0.006666666666666667, 0.0019460170216420796, 0.0005714285714285715,
      0.00016865480854231355,
    ],
    attention: 1.1902380714238083,
  },
  {
    name: "longrope long factors, default attention",
    rope: spec(16, 16, 10000, LONGROPE(true)),
    expected: [
      0.5, 0.06324555320336758, 0.0125, 0.002874797872880345, 0.0007142857142857143, 0.0001860163329510811, 5e-5,
      1.3749033305079909e-5,
    ],
    attention: 1.1902380714238083,
  },
  {
    name: "longrope long factors, partial (head 64 / rotary 16), attention_factor given 1.25",
    rope: spec(64, 16, 10000, LONGROPE(true, { attention_factor: 1.25 })),
    expected: [
      0.5, 0.06324555320336758, 0.0125, 0.002874797872880345, 0.0007142857142857143, 0.0001860163329510811, 5e-5,
      1.3749033305079909e-5,
    ],
    attention: 1.25,
  },
];

/** Attention factors alone (the frequencies of these specs are covered above). */
const HARD_CODED_ATTENTION: { name: string; rope: RopeSpec; attention: number }[] = [
  { name: "yarn factor <= 1", rope: spec(32, 32, 10000, { ...YARN_SCALING, factor: 0.5 }), attention: 1 },
  {
    name: "yarn mscale = mscale_all_dim = 0.707 (DeepSeek), factor 40",
    rope: spec(32, 32, 10000, { ...YARN_SCALING, factor: 40, mscale: 0.707, mscale_all_dim: 0.707 }),
    attention: 1,
  },
  { name: "longrope factor 1", rope: spec(16, 16, 10000, LONGROPE(true, { factor: 1 })), attention: 1 },
  { name: "llama3", rope: spec(16, 16, 500000, LLAMA3_SCALING), attention: 1 },
];

describe("RoPE frequencies: hard-coded values", () => {
  for (const c of HARD_CODED) {
    it(c.name, () => {
      let compared = 0;
      const reference = formulaInverseFrequencies(c.rope, c.context);
      compared += compareAll(reference, c.expected, FLOAT64_REL, "reference");
      const srcApplies = c.context?.sequence_length === undefined || c.context.sequence_length <= (c.context.max_position_embeddings ?? Infinity);
      if (srcApplies) {
        const src = ropeInverseFrequencies(c.rope);
        compared += compareAll(src, c.expected, FLOAT32_REL, "src");
        compared += compareAll(src, reference, FLOAT32_REL, "src vs reference");
      }
      if (c.attention !== undefined) {
        assertClose(formulaAttentionFactor(c.rope, c.context), c.attention, FLOAT64_REL, "reference attention factor");
        compared++;
        if (srcApplies) {
          assertClose(ropeAttentionFactor(c.rope), c.attention, FLOAT64_REL, "src attention factor");
          compared++;
        }
      }
      const half = c.rope.rotary_dim / 2;
      assert.equal(c.expected.length, half, "the table has one value per rotating pair");
      assert.equal(compared, (srcApplies ? 3 : 1) * half + (c.attention === undefined ? 0 : srcApplies ? 2 : 1));
    });
  }

  for (const c of HARD_CODED_ATTENTION) {
    it(`attention factor: ${c.name}`, () => {
      let compared = 0;
      assertClose(formulaAttentionFactor(c.rope), c.attention, FLOAT64_REL, "reference");
      compared++;
      assertClose(ropeAttentionFactor(c.rope), c.attention, FLOAT64_REL, "src");
      compared++;
      assert.equal(compared, 2);
    });
  }

  it("the hard-coded cases cover every scaling type", () => {
    const types = new Set(HARD_CODED.map((c) => c.rope.scaling?.rope_type ?? "default"));
    assert.deepEqual([...types].sort(), ["default", "dynamic", "linear", "llama3", "longrope", "yarn"]);
    assert.equal(HARD_CODED.length, 23);
  });

  it("llama3 case has a frequency in each band (kept, smoothed, divided)", () => {
    const rope = spec(16, 16, 500000, LLAMA3_SCALING);
    const plain = formulaInverseFrequencies(spec(16, 16, 500000));
    const scaled = ropeInverseFrequencies(rope);
    const bands = { high: 0, middle: 0, low: 0 };
    plain.forEach((f, i) => {
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < 8192 / 4) {
        bands.high++;
        assertClose(scaled[i], f, FLOAT32_REL, `kept ${i}`);
      } else if (wavelen > 8192 / 1) {
        bands.low++;
        assertClose(scaled[i], f / 8, FLOAT32_REL, `divided ${i}`);
      } else {
        bands.middle++;
        assert.ok(scaled[i] < f * (1 - 1e-3) && scaled[i] > (f / 8) * (1 + 1e-3), `smoothed ${i} strictly between f / 8 and f`);
      }
    });
    assert.deepEqual(bands, { high: 4, middle: 1, low: 3 });
  });

  it("yarn cases have interior ramp values (strictly between the end points)", () => {
    let interior = 0;
    for (const [truncate, expectedInterior] of [[true, 6], [false, 6]] as const) {
      const [low, high] = yarnFindCorrectionRange(32, 1, 32, 10000, 4096, truncate);
      const ramp = yarnLinearRampFactor(low, high, 16);
      const inside = ramp.filter((r) => r > 0 && r < 1).length;
      assert.equal(inside, expectedInterior, `truncate ${truncate}: [${low}, ${high}]`);
      interior += inside;
    }
    assert.deepEqual(yarnFindCorrectionRange(32, 1, 32, 10000, 4096, true), [5, 12]);
    assert.equal(interior, 12);
  });
});

/** Longrope factors of the right length for a rotary dim: short ones near 1, long ones growing. */
function longropeFactors(half: number): { short: number[]; long: number[] } {
  return {
    short: Array.from({ length: half }, (_, j) => 1 + 0.03 * j),
    long: Array.from({ length: half }, (_, j) => 1 + Math.pow(j, 1.3) / 2),
  };
}

function sweepScalings(half: number): (RopeScaling | undefined)[] {
  const { short, long } = longropeFactors(half);
  return [
    undefined,
    { rope_type: "linear", factor: 2 },
    { rope_type: "linear", factor: 8 },
    { rope_type: "dynamic", factor: 2 },
    { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    { rope_type: "llama3", factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    { rope_type: "llama3", factor: 16, low_freq_factor: 2, high_freq_factor: 8, original_max_position_embeddings: 4096 },
    { rope_type: "yarn", factor: 4, original_max_position_embeddings: 4096 },
    { rope_type: "yarn", factor: 8, original_max_position_embeddings: 32768, truncate: false },
    { rope_type: "yarn", factor: 2, original_max_position_embeddings: 2048, beta_fast: 16, beta_slow: 2, attention_factor: 0.9 },
    { rope_type: "yarn", factor: 40, original_max_position_embeddings: 4096, mscale: 1, mscale_all_dim: 0.707 },
    { rope_type: "yarn", factor: 40, original_max_position_embeddings: 4096, mscale: 0.707, mscale_all_dim: 0.707, beta_fast: 32, beta_slow: 1 },
    { rope_type: "longrope", short_factor: short, long_factor: long, original_max_position_embeddings: 4096, factor: 32, use_long_factor: false },
    { rope_type: "longrope", short_factor: short, long_factor: long, original_max_position_embeddings: 4096, factor: 32, use_long_factor: true },
    { rope_type: "longrope", short_factor: short, long_factor: long, original_max_position_embeddings: 8192, factor: 16, use_long_factor: true, attention_factor: 1.1 },
  ];
}

describe("RoPE frequencies: src against the independent formulas", () => {
  const geometries: [head_dim: number, rotary_dim: number][] = [
    [64, 64], [64, 32], [64, 16], [80, 32], [96, 24], [128, 128], [128, 64], [256, 64],
  ];
  const thetas = [10000, 500000, 1000000];

  it("every scaling type x full and partial rotary dims x theta", () => {
    let compared = 0;
    let expectedCount = 0;
    let specs = 0;
    for (const [head_dim, rotary_dim] of geometries) {
      for (const theta of thetas) {
        for (const scaling of sweepScalings(rotary_dim / 2)) {
          for (const layout of ["rotate_half", "interleaved"] as const) {
            const rope = spec(head_dim, rotary_dim, theta, scaling, layout);
            const label = `${layout} ${head_dim}/${rotary_dim} theta ${theta} ${JSON.stringify(scaling ?? "default")}`;
            compared += compareAll(ropeInverseFrequencies(rope), formulaInverseFrequencies(rope), FLOAT32_REL, label);
            assertClose(ropeAttentionFactor(rope), formulaAttentionFactor(rope), FLOAT64_REL, `${label} attention`);
            compared++;
            expectedCount += rotary_dim / 2 + 1;
            specs++;
          }
        }
      }
    }
    assert.equal(specs, geometries.length * thetas.length * 15 * 2);
    assert.equal(compared, expectedCount);
    assert.ok(compared > 10000, `compared ${compared}`);
  });

  it("the float32 frequencies the oracles use are the rounding of the formulas", () => {
    const rope = spec(64, 32, 10000, { rope_type: "yarn", factor: 4, original_max_position_embeddings: 4096 });
    const f32 = formulaInverseFrequenciesFloat32(rope);
    const f64 = formulaInverseFrequencies(rope);
    f64.forEach((f, i) => assert.equal(f32[i], Math.fround(f)));
    assert.equal(f32.length, 16);
  });
});

/** Rotation of each row by `distance` positions, written from the RoPE definition. */
function rotateRows(rope: RopeSpec, frequencies: ArrayLike<number>, distance: number, rows: Float32Array, count: number): Float64Array {
  const out = Float64Array.from(rows);
  const half = rope.rotary_dim / 2;
  for (let r = 0; r < count; r++) {
    const o = r * rope.head_dim;
    for (let i = 0; i < half; i++) {
      const [a, b] = rope.layout === "rotate_half" ? [i, i + half] : [2 * i, 2 * i + 1];
      const angle = distance * frequencies[i];
      const x = rows[o + a];
      const y = rows[o + b];
      out[o + a] = x * Math.cos(angle) - y * Math.sin(angle);
      out[o + b] = y * Math.cos(angle) + x * Math.sin(angle);
    }
  }
  return out;
}

describe("KeyRotation against the RoPE definition", () => {
  it("hard-coded: head 6 / rotary 4, theta 1e4, distance 3, both layouts", () => {
    // python3: pairs (0, 2), (1, 3) for rotate_half and (0, 1), (2, 3) for interleaved; frequencies [1, 0.01].
    const expected = {
      rotate_half: [-1.413352520780047, 1.8791180666879925, -2.828857481741469, 4.058191135400942, 5, 6],
      interleaved: [-1.27223251272018, -1.8388649851410237, 2.87866810043698, 4.088186635603437, 5, 6],
    };
    let compared = 0;
    for (const layout of ["rotate_half", "interleaved"] as const) {
      const rope = spec(6, 4, 10000, undefined, layout);
      const source = Float32Array.from([1, 2, 3, 4, 5, 6]);
      const target = new Float32Array(6);
      new KeyRotation(rope, ropeInverseFrequencies(rope), 3).apply(source, 0, target, 0, 1);
      for (let d = 0; d < 6; d++) {
        assert.ok(Math.abs(target[d] - expected[layout][d]) <= 1e-6 * (1 + Math.abs(expected[layout][d])), `${layout} dim ${d}: ${target[d]}`);
        compared++;
      }
    }
    assert.equal(compared, 12);
  });

  it("moving rows by d equals cos/sin of d * inv_freq on the layout's pairs; other dims pass through", () => {
    const cases: RopeSpec[] = [];
    for (const layout of ["rotate_half", "interleaved"] as const) {
      for (const [head_dim, rotary_dim] of [[16, 16], [12, 8], [10, 4], [32, 8]] as const) {
        cases.push(spec(head_dim, rotary_dim, 10000, undefined, layout));
        cases.push(spec(head_dim, rotary_dim, 500000, { rope_type: "yarn", factor: 4, original_max_position_embeddings: 256 }, layout));
      }
    }
    const distances = [1, 3, -5, 37, 1000];
    const rows = 3;
    let compared = 0;
    let expectedCount = 0;
    for (const rope of cases) {
      const frequencies = formulaInverseFrequenciesFloat32(rope);
      for (const distance of distances) {
        const source = Float32Array.from({ length: rows * rope.head_dim + 5 }, (_, i) => Math.sin(1.7 * i + 0.3) * 2);
        const offset = 5; // rows start past a few unrelated values, which must stay untouched
        const rowsView = source.subarray(offset);
        const expected = rotateRows(rope, frequencies, distance, rowsView, rows);
        const label = `${rope.layout} ${rope.head_dim}/${rope.rotary_dim} d=${distance}`;
        const rotation = new KeyRotation(rope, frequencies, distance);

        const target = new Float32Array(source.length).fill(-7);
        rotation.apply(source, offset, target, offset, rows);
        for (let k = 0; k < expected.length; k++) {
          assert.ok(Math.abs(target[offset + k] - expected[k]) <= 1e-6 * (1 + Math.abs(expected[k])), `${label} [${k}]: ${target[offset + k]} vs ${expected[k]}`);
          compared++;
        }
        for (let k = 0; k < offset; k++) assert.equal(target[k], -7, `${label}: wrote before the offset`);
        for (let r = 0; r < rows; r++) {
          for (let d = rope.rotary_dim; d < rope.head_dim; d++) {
            assert.equal(target[offset + r * rope.head_dim + d], rowsView[r * rope.head_dim + d], `${label}: pass-through dim ${d}`);
          }
        }

        const inPlace = Float32Array.from(source);
        rotation.apply(inPlace, offset, inPlace, offset, rows);
        for (let k = 0; k < expected.length; k++) {
          assert.ok(Math.abs(inPlace[offset + k] - expected[k]) <= 1e-6 * (1 + Math.abs(expected[k])), `${label} in place [${k}]`);
          compared++;
        }
        expectedCount += 2 * rows * rope.head_dim;
      }
    }
    assert.equal(cases.length, 16);
    assert.equal(compared, expectedCount);
    assert.ok(compared > 1000, `compared ${compared}`);
  });
});

describe("yarn betas as transformers reads them", () => {
  it("a zero beta_fast or beta_slow takes the default, as `config.get(...) or default` does", () => {
    const rope = (scaling: RopeScaling) => spec(32, 32, 10000, scaling);
    const defaults = ropeInverseFrequencies(rope(YARN_SCALING));
    for (const zero of [{ beta_fast: 0 }, { beta_slow: 0 }]) {
      const withZero = ropeInverseFrequencies(rope({ ...YARN_SCALING, ...zero } as RopeScaling));
      assert.equal(withZero.length, 16);
      assert.deepEqual(Array.from(withZero), Array.from(defaults), JSON.stringify(zero));
    }
  });
});

/**
 * The ONNX decoder graph computes the transformers.js decoder contract: checked against a plain float64
 * forward (test/helpers/naive_forward.ts) for every tiny fixture variant, then through transformers.js itself.
 * Also covers streaming export, fp16 storage, external data, validation and the fixtures' sensitivity.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InferenceSession, Tensor as OrtTensor } from "onnxruntime-node";
import * as transformers from "@huggingface/transformers";
import { AutoModelForCausalLM, Tensor } from "@huggingface/transformers";
import { weightShapes, type DecoderSpec, type DecoderWeights, type WeightTensor } from "../src/architecture/decoder_spec.js";
import { buildDecoderOnnx, writeDecoderOnnx, type WeightSource } from "../src/onnx/decoder_export.js";
import { float32ToFloat16Bits } from "../src/onnx/float16.js";
import { alibiSlopes } from "../src/positions/alibi.js";
import { randomDecoderWeights } from "./support/fixtures/random_weights.js";
import { TINY_VARIANTS, tinyDecoderSpec, writeTinyModel, type TinyVariant } from "./support/fixtures/tiny_models.js";
import { naiveForward, type NaiveInputs } from "./support/naive_forward.js";

transformers.env.allowRemoteModels = false;

const TOLERANCE = 1e-4;
const SEED = 11;

function fixture(variant: TinyVariant): { spec: DecoderSpec; weights: Map<string, WeightTensor> } {
  const spec = tinyDecoderSpec(variant);
  return { spec, weights: randomDecoderWeights(spec, SEED) };
}

const tempDir = () => mkdtemp(join(tmpdir(), "attention-sinks-onnx-"));

/** Asserts |actual - expected| <= tolerance, and only finiteness where the contract leaves a value undefined (NaN). */
function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, label: string, tolerance = TOLERANCE): void {
  assert.equal(actual.length, expected.length, `${label}: length`);
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    assert.ok(Number.isFinite(actual[i]), `${label}: element ${i} is ${actual[i]}`);
    if (!Number.isNaN(expected[i])) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  }
  assert.ok(worst <= tolerance, `${label}: max difference ${worst} > ${tolerance}`);
}

function maxDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

const int64Tensor = (rows: readonly (readonly number[])[]) =>
  new OrtTensor("int64", BigInt64Array.from(rows.flat().map(BigInt)), [rows.length, rows[0].length]);

/** Runs the ORT session on the same inputs the naive forward takes. */
async function runOrt(session: InferenceSession, spec: DecoderSpec, inputs: NaiveInputs, past: OrtTensor[] | undefined) {
  const feeds: Record<string, OrtTensor> = {
    input_ids: int64Tensor(inputs.inputIds),
    attention_mask: int64Tensor(inputs.attentionMask),
  };
  if (inputs.positionIds) feeds.position_ids = int64Tensor(inputs.positionIds);
  const batch = inputs.inputIds.length;
  const empty = () => new OrtTensor("float32", new Float32Array(0), [batch, spec.num_kv_heads, 0, spec.head_dim]);
  for (let i = 0; i < spec.num_layers; i++) {
    feeds[`past_key_values.${i}.key`] = past?.[2 * i] ?? empty();
    feeds[`past_key_values.${i}.value`] = past?.[2 * i + 1] ?? empty();
  }
  const out = await session.run(feeds);
  const present: OrtTensor[] = [];
  for (let i = 0; i < spec.num_layers; i++) {
    present.push(out[`present.${i}.key`] as OrtTensor, out[`present.${i}.value`] as OrtTensor);
  }
  return { logits: out.logits as OrtTensor, present };
}

async function ortLogits(session: InferenceSession, spec: DecoderSpec, inputs: NaiveInputs): Promise<Float32Array> {
  return (await runOrt(session, spec, inputs, undefined)).logits.data as Float32Array;
}

const usesPositionIds = (spec: DecoderSpec) => spec.positions.kind !== "alibi";

/** Bytes of all weights stored as float32. */
const float32WeightBytes = (spec: DecoderSpec) =>
  [...weightShapes(spec).values()].reduce((sum, shape) => sum + 4 * shape.reduce((count, dim) => count * dim, 1), 0);

describe("decoder graph matches a naive float64 forward", () => {
  for (const variant of TINY_VARIANTS) {
    it(`${variant}: prompt with left padding, decode steps, a masked middle slot, far positions`, async () => {
      const { spec, weights } = fixture(variant);
      const session = await InferenceSession.create(buildDecoderOnnx(spec, weights));

      const pastNames = Array.from({ length: spec.num_layers }, (_, i) => [
        `past_key_values.${i}.key`,
        `past_key_values.${i}.value`,
      ]).flat();
      const positionInput = usesPositionIds(spec) ? ["position_ids"] : [];
      assert.deepEqual(session.inputNames, ["input_ids", "attention_mask", ...positionInput, ...pastNames]);
      assert.deepEqual(session.outputNames, ["logits", ...pastNames.map((name) => name.replace("past_key_values", "present"))]);
      const pastMeta = session.inputMetadata.find((meta) => meta.name === "past_key_values.0.key");
      assert.ok(pastMeta?.isTensor);
      assert.deepEqual(pastMeta.shape, ["batch_size", spec.num_kv_heads, "past_sequence_length", spec.head_dim]);

      // Row 1 is left-padded: its first two queries see no slot at all.
      const mask = [
        [1, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1],
      ];
      const tokens = [
        [5, 9, 17, 33, 2, 40],
        [0, 0, 7, 61, 12, 3],
      ];
      // transformers.js positions: cumsum(mask) - 1, padding at 1.
      const positions = mask.map((row) => {
        let seen = 0;
        return row.map((m) => (m ? seen++ : 1));
      });
      // Each step: its tokens, its positions (far past max_positions for RoPE), and a slot to mask from then on.
      const far = spec.positions.kind === "rope" ? 5000 : 0;
      const steps = [
        { tokens: [[21], [8]], positions: [[6], [4]] },
        { tokens: [[30], [50]], positions: [[7], [5]], maskSlot: 3 },
        { tokens: [[14], [6]], positions: [[far + 8], [far + 6]] },
      ];

      let inputs: NaiveInputs = {
        inputIds: tokens,
        attentionMask: mask,
        positionIds: usesPositionIds(spec) ? positions : undefined,
      };
      let expected = naiveForward(spec, weights, inputs);
      let actual = await runOrt(session, spec, inputs, undefined);
      const check = (label: string) => {
        assertClose(actual.logits.data as Float32Array, expected.logits, `${label} logits`);
        expected.present.forEach((cache, i) => {
          assertClose(actual.present[2 * i].data as Float32Array, cache.key, `${label} present.${i}.key`);
          assertClose(actual.present[2 * i + 1].data as Float32Array, cache.value, `${label} present.${i}.value`);
        });
      };
      check("prompt");

      let attentionMask = mask.map((row) => [...row]);
      for (const [s, step] of steps.entries()) {
        if (step.maskSlot !== undefined) attentionMask[0][step.maskSlot] = 0;
        attentionMask = attentionMask.map((row) => [...row, 1]);
        inputs = {
          inputIds: step.tokens,
          attentionMask,
          positionIds: usesPositionIds(spec) ? step.positions : undefined,
          past: expected.present,
        };
        const ortPast = actual.present;
        expected = naiveForward(spec, weights, inputs);
        actual = await runOrt(session, spec, inputs, ortPast);
        check(`step ${s + 1}`);

        if (step.maskSlot !== undefined) {
          // Excluded means excluded: garbage in the masked slot's cache entries changes nothing.
          const corrupted = ortPast.map((tensor) => {
            const data = Float32Array.from(tensor.data as Float32Array);
            const [batch, kvHeads, length, headDim] = tensor.dims;
            for (let g = 0; g < kvHeads; g++) {
              const at = (g * length + step.maskSlot) * headDim; // batch row 0
              data.fill(1000 * (g + 1), at, at + headDim);
            }
            return new OrtTensor("float32", data, [batch, kvHeads, length, headDim]);
          });
          const rerun = await runOrt(session, spec, inputs, corrupted);
          assertClose(rerun.logits.data as Float32Array, actual.logits.data as Float32Array, "masked slot corrupted", 1e-6);
        }
      }
    });
  }
});

describe("tiny fixtures make position handling observable", () => {
  const tokens = [[4, 19, 33, 7, 52, 11, 26, 40]];
  const ones = [tokens[0].map(() => 1)];
  const lastLogits = (spec: DecoderSpec, weights: DecoderWeights, inputs: NaiveInputs) => {
    const { logits } = naiveForward(spec, weights, inputs);
    return logits.subarray(logits.length - spec.vocab_size);
  };
  for (const variant of TINY_VARIANTS) {
    it(`${variant}: dropping the first token or moving one key by one position changes the logits`, () => {
      const { spec, weights } = fixture(variant);
      const positions = usesPositionIds(spec) ? [tokens[0].map((_, i) => i)] : undefined;
      const base = lastLogits(spec, weights, { inputIds: tokens, attentionMask: ones, positionIds: positions });
      const withoutSink = lastLogits(spec, weights, {
        inputIds: tokens,
        attentionMask: [ones[0].map((m, i) => (i === 0 ? 0 : m))],
        positionIds: positions,
      });
      assert.ok(maxDifference(base, withoutSink) > 1e-2, "dropping the sink token");
      if (positions) {
        const shifted = [positions[0].map((p, i) => (i === 2 ? p + 1 : p))];
        const moved = lastLogits(spec, weights, { inputIds: tokens, attentionMask: ones, positionIds: shifted });
        assert.ok(maxDifference(base, moved) > 1e-2, "one key off by one position");
      }
    });
  }
});

describe("transformers.js loads the tiny model directories", () => {
  /** Greedy decoding with the naive forward, recomputing the whole sequence each step. */
  const naiveGreedy = (spec: DecoderSpec, weights: DecoderWeights, prompt: number[], steps: number, eos: number) => {
    const sequence = [...prompt];
    for (let s = 0; s < steps; s++) {
      const { logits } = naiveForward(spec, weights, {
        inputIds: [sequence],
        attentionMask: [sequence.map(() => 1)],
        positionIds: usesPositionIds(spec) ? [sequence.map((_, i) => i)] : undefined,
      });
      const last = logits.subarray(logits.length - spec.vocab_size);
      const next = last.indexOf(Math.max(...last));
      sequence.push(next);
      if (next === eos) break;
    }
    return sequence;
  };

  for (const variant of TINY_VARIANTS) {
    it(`${variant}: from_pretrained + generate equals greedy decoding`, async () => {
      const dir = await tempDir();
      const { spec, weights, config } = await writeTinyModel(dir, variant, { seed: SEED });
      const model = await AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true });
      const prompt = [1, 17, 42, 5];
      const input_ids = new Tensor("int64", BigInt64Array.from(prompt.map(BigInt)), [1, prompt.length]);
      const attention_mask = new Tensor("int64", BigInt64Array.from(prompt.map(() => 1n)), [1, prompt.length]);
      const output = await model.generate({ input_ids, attention_mask, max_new_tokens: 5 });
      assert.ok(output instanceof Tensor);
      const generated = Array.from(output.data as BigInt64Array, Number);
      assert.deepEqual(generated, naiveGreedy(spec, weights, prompt, 5, config.eos_token_id as number));
      await model.dispose();
    });
  }

  it("loads weights stored as external data", async () => {
    const dir = await tempDir();
    const { spec, weights, config } = await writeTinyModel(dir, "llama", { seed: SEED, external_data_threshold_bytes: 0 });
    assert.deepEqual(config["transformers.js_config"], { use_external_data_format: true });
    assert.deepEqual((await readdir(join(dir, "onnx"))).sort(), ["model.onnx", "model.onnx_data"]);
    const model = await AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true });
    const prompt = [1, 17, 42];
    const input_ids = new Tensor("int64", BigInt64Array.from(prompt.map(BigInt)), [1, prompt.length]);
    const attention_mask = new Tensor("int64", BigInt64Array.from(prompt.map(() => 1n)), [1, prompt.length]);
    // The weights read from the data file compute the naive forward's logits at every position...
    const { logits } = (await model({ input_ids, attention_mask })) as { logits: Tensor };
    assert.deepEqual(logits.dims, [1, prompt.length, spec.vocab_size]);
    const expected = naiveForward(spec, weights, { inputIds: [prompt], attentionMask: [prompt.map(() => 1)], positionIds: [prompt.map((_, i) => i)] });
    assertClose(logits.data as Float32Array, expected.logits, "external-data logits");
    // ...and generate() continues the prompt as greedy decoding with the naive forward does.
    const output = await model.generate({ input_ids, attention_mask, max_new_tokens: 3 });
    assert.ok(output instanceof Tensor);
    assert.deepEqual(Array.from(output.data as BigInt64Array, Number), naiveGreedy(spec, weights, prompt, 3, config.eos_token_id as number));
    await model.dispose();
  });
});

describe("export", () => {
  const probe = (spec: DecoderSpec): NaiveInputs => ({
    inputIds: [[3, 14, 15, 9, 26]],
    attentionMask: [[1, 1, 1, 1, 1]],
    positionIds: usesPositionIds(spec) ? [[0, 1, 2, 3, 4]] : undefined,
  });

  /** A source that answers asynchronously and counts loads per name. */
  const countingSource = (weights: DecoderWeights) => {
    const loads = new Map<string, number>();
    const source: WeightSource = {
      async load(name) {
        loads.set(name, (loads.get(name) ?? 0) + 1);
        await new Promise((resolve) => setImmediate(resolve));
        return weights.get(name)!;
      },
    };
    return { source, loads };
  };

  for (const variant of ["llama", "gpt2"] as const) {
    for (const dtype of ["fp32", "fp16"] as const) {
      it(`${variant} ${dtype}: writeDecoderOnnx streams exactly buildDecoderOnnx's bytes, loading each weight once`, async () => {
        const { spec, weights } = fixture(variant);
        const path = join(await tempDir(), "model.onnx");
        const { source, loads } = countingSource(weights);
        await writeDecoderOnnx(spec, source, path, { dtype });
        assert.deepEqual(new Uint8Array(await readFile(path)), buildDecoderOnnx(spec, weights, { dtype }));
        assert.deepEqual([...loads.keys()].sort(), [...weightShapes(spec).keys()].sort());
        assert.ok([...loads.values()].every((count) => count === 1));
      });
    }
  }

  for (const variant of ["llama", "bloom"] as const) {
    it(`${variant}: fp16 storage halves the weights and stays close to fp32`, async () => {
      const { spec, weights } = fixture(variant);
      const fp32 = buildDecoderOnnx(spec, weights);
      const fp16 = buildDecoderOnnx(spec, weights, { dtype: "fp16" });
      const saved = fp32.byteLength - fp16.byteLength;
      assert.ok(saved > 0.45 * float32WeightBytes(spec), `fp16 saves only ${saved} bytes`);
      const inputs = probe(spec);
      const full = await ortLogits(await InferenceSession.create(fp32), spec, inputs);
      const half = await ortLogits(await InferenceSession.create(fp16), spec, inputs);
      const difference = maxDifference(full, half);
      assert.ok(difference > 0 && difference < 2e-2, `fp16 vs fp32 logits differ by ${difference}`);
    });
  }

  it("external data: a forced threshold moves every weight to <path>_data and computes the same logits", async () => {
    const { spec, weights } = fixture("gpt_neox");
    const dir = await tempDir();
    const path = join(dir, "model.onnx");
    await writeDecoderOnnx(spec, countingSource(weights).source, path, { external_data_threshold_bytes: 0 });
    const inlineModel = buildDecoderOnnx(spec, weights);
    const modelSize = (await stat(path)).size;
    assert.equal((await stat(`${path}_data`)).size, float32WeightBytes(spec));
    assert.ok(modelSize < inlineModel.byteLength - float32WeightBytes(spec) + 8192, `model file ${modelSize} bytes`);
    const inputs = probe(spec);
    const external = await ortLogits(await InferenceSession.create(path), spec, inputs);
    const inline = await ortLogits(await InferenceSession.create(inlineModel), spec, inputs);
    assert.deepEqual(external, inline);
    // Re-exporting inline removes the stale data file.
    await writeDecoderOnnx(spec, countingSource(weights).source, path);
    assert.deepEqual(await readdir(dir), ["model.onnx"]);
  });

  it("a failing weight source leaves no file behind", async () => {
    const { spec, weights } = fixture("llama");
    for (const external_data_threshold_bytes of [undefined, 0]) {
      const dir = await tempDir();
      let loaded = 0;
      const failing: WeightSource = {
        async load(name) {
          if (++loaded === 5) throw new Error("disk on fire");
          return weights.get(name)!;
        },
      };
      const written = writeDecoderOnnx(spec, failing, join(dir, "model.onnx"), { external_data_threshold_bytes });
      await assert.rejects(written, /disk on fire/);
      assert.deepEqual(await readdir(dir), []);
    }
  });

  it("rejects wrong weight shapes and invalid specs with errors naming the problem", async () => {
    const { spec, weights } = fixture("llama");
    const name = "model.layers.1.self_attn.k_proj.weight";
    const wrong = new Map(weights);
    wrong.set(name, { shape: [8, 32], data: new Float32Array(8 * 32) });
    const message = /model\.layers\.1\.self_attn\.k_proj\.weight: shape \[8, 32\] does not match the expected \[16, 32\]/;
    assert.throws(() => buildDecoderOnnx(spec, wrong), message);

    const dir = await tempDir();
    await assert.rejects(writeDecoderOnnx(spec, { load: (n) => wrong.get(n)! }, join(dir, "model.onnx")), message);
    assert.deepEqual(await readdir(dir), []);

    const missing = new Map(weights);
    missing.delete("lm_head.weight");
    assert.throws(() => buildDecoderOnnx(spec, missing), /weight lm_head\.weight: missing \(expected shape \[64, 32\]\)/);
    assert.throws(
      () => buildDecoderOnnx({ ...spec, num_kv_heads: 3 }, weights),
      /num_heads \(4\) must be a multiple of num_kv_heads \(3\)/,
    );
    const rope = spec.positions.kind === "rope" ? spec.positions.rope : assert.fail("llama uses rope");
    assert.throws(
      () => buildDecoderOnnx({ ...spec, positions: { kind: "rope", rope: { ...rope, rotary_dim: 5 } } }, weights),
      /rotary_dim must be even/,
    );
  });
});

describe("numeric helpers", () => {
  it("alibiSlopes: Press et al. / Bloom slopes, including non-powers of two", () => {
    assert.deepEqual(Array.from(alibiSlopes(8)), [1, 2, 3, 4, 5, 6, 7, 8].map((i) => 2 ** -i));
    assert.deepEqual(Array.from(alibiSlopes(4)), [0.25, 0.0625, 0.015625, 0.00390625]);
    assert.deepEqual(Array.from(alibiSlopes(6)), [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]);
    const twelve = alibiSlopes(12);
    assert.equal(twelve[8], Math.fround(2 ** -0.5));
    assert.equal(twelve[11], Math.fround(2 ** -3.5));
  });

  it("float32ToFloat16Bits rounds to nearest even and handles the edges", () => {
    const cases: [number, number][] = [
      [0, 0x0000],
      [-0, 0x8000],
      [1, 0x3c00],
      [-2, 0xc000],
      [65504, 0x7bff],
      [65519.99, 0x7bff],
      [65520, 0x7c00], // halfway to 65536: ties to even overflow to infinity
      [1 + 2 ** -11, 0x3c00], // halfway, rounds to the even neighbour
      [1 + 3 * 2 ** -11, 0x3c02],
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // halfway to it: ties to even zero
      [1.5 * 2 ** -24, 0x0002],
      [Infinity, 0x7c00],
      [-Infinity, 0xfc00],
      [1e-10, 0x0000],
    ];
    for (const [value, bits] of cases) assert.equal(float32ToFloat16Bits(value), bits, `${value}`);
    assert.equal(float32ToFloat16Bits(NaN) & 0x7e00, 0x7e00);
  });
});

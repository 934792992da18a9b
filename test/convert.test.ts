/**
 * Checkpoint conversion, measured through transformers.js on the real shared models: the converted
 * stories260K (llama2.c and GGUF) and TinyStories-656K (Hugging Face) reproduce the outputs of independent
 * implementations in ../shared/data/reference.json token for token. Also: the content-keyed conversion
 * cache, fp16 output, and that failures leave nothing behind.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { AutoModelForCausalLM, AutoTokenizer, env, Tensor, type PreTrainedModel } from "@huggingface/transformers";
import { convertCheckpoint, ConversionError, ModelNotFoundError, resolveModelSource, type ConvertDtype } from "../src/convert/index.js";
import { writeModelDirectory } from "../src/convert/convert.js";
import { openCheckpoint } from "../src/convert/formats.js";
import { sharedFiles, sharedReference } from "./support/shared_data.js";

env.allowRemoteModels = false;

const STORIES_BIN = "models/stories260K/stories260K.bin";
const STORIES_TOKENIZER = "models/stories260K/tok512.bin";
const STORIES_GGUF = "models/stories260K/stories260K.v1.gguf";
const TINYSTORIES_DIR = "models/tinystories-656k";
const BOS = 1;

const work = mkdtempSync(join(tmpdir(), "attention-sinks-convert-"));
after(() => rmSync(work, { recursive: true, force: true }));
let outputs = 0;
const freshDir = (name: string) => join(work, `${name}-${++outputs}`);

async function load(dir: string, dtype: ConvertDtype = "fp32") {
  const options = { local_files_only: true };
  const tokenizer = await AutoTokenizer.from_pretrained(dir, options);
  const model = await AutoModelForCausalLM.from_pretrained(dir, { ...options, dtype });
  return { tokenizer, model };
}

const idsTensor = (ids: readonly number[]) => new Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]);

/** Greedy continuation of BOS alone: the new token ids. */
async function greedyFromBos(model: PreTrainedModel, maxNewTokens: number): Promise<number[]> {
  const output = (await model.generate({ inputs: idsTensor([BOS]), max_new_tokens: maxNewTokens, do_sample: false })) as Tensor;
  return Array.from(output.data as BigInt64Array, Number).slice(1);
}

/** Logits of every position of `ids`, as [position][vocab] rows. */
async function logitsOf(model: PreTrainedModel, ids: readonly number[]): Promise<Float32Array[]> {
  const { logits } = (await model({
    input_ids: idsTensor(ids),
    attention_mask: new Tensor("int64", new BigInt64Array(ids.length).fill(1n), [1, ids.length]),
  })) as { logits: Tensor };
  const vocab = logits.dims[2];
  const data = logits.data as Float32Array;
  return ids.map((_, t) => data.subarray(t * vocab, (t + 1) * vocab));
}

/** Mean negative log-likelihood (nats) of each next token of `ids` under teacher forcing. */
async function meanNll(model: PreTrainedModel, ids: readonly number[]): Promise<number> {
  const rows = await logitsOf(model, ids);
  let total = 0;
  for (let t = 0; t + 1 < ids.length; t++) {
    const row = rows[t];
    const max = row.reduce((a, b) => Math.max(a, b), -Infinity);
    const logSum = Math.log(row.reduce((sum, x) => sum + Math.exp(x - max), 0)) + max;
    total += logSum - row[ids[t + 1]];
  }
  return total / (ids.length - 1);
}

for (const [format, checkpoint] of [
  ["llama2.c checkpoint", STORIES_BIN],
  ["GGUF v1 file", STORIES_GGUF],
] as const) {
  test(`stories260K from its ${format} reproduces llama2.c's tokenizer and greedy text`, async (t) => {
    const files = sharedFiles(t, checkpoint, STORIES_TOKENIZER);
    const reference = sharedReference(t)?.stories260K;
    if (!files || !reference) return;
    const out = freshDir("stories260K");
    const started = performance.now();
    await convertCheckpoint(files[0], out, checkpoint === STORIES_BIN ? { tokenizer: files[1] } : {});
    t.diagnostic(`converted in ${(performance.now() - started).toFixed(0)} ms`);
    const { tokenizer, model } = await load(out);

    assert.deepEqual(tokenizer.encode("Once upon a time"), reference.encode_Once_upon_a_time_with_BOS);
    assert.deepEqual(tokenizer.encode(reference.first_valid_story.text), reference.first_valid_story.ids);

    const generated = await greedyFromBos(model, 256);
    assert.deepEqual(generated.slice(0, 64), reference.greedy_from_BOS_ids_first64);
    // run.c prints the 256 pieces, then a newline.
    assert.equal(tokenizer.decode(generated) + "\n", reference.greedy_from_BOS_text_runc_256steps);
  });
}

test("TinyStories-656K from its Hugging Face directory reproduces greedy ids and story NLL", async (t) => {
  const files = sharedFiles(t, TINYSTORIES_DIR);
  const reference = sharedReference(t)?.["tinystories-656k"];
  if (!files || !reference) return;
  const out = freshDir("tinystories");
  const started = performance.now();
  await convertCheckpoint(files[0], out);
  t.diagnostic(`converted in ${(performance.now() - started).toFixed(0)} ms`);
  for (const name of ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "onnx/model.onnx"]) {
    assert.ok(existsSync(join(out, name)), name);
  }
  const { model } = await load(out);
  assert.deepEqual(await greedyFromBos(model, 512), reference.greedy_from_BOS_ids);
  const nll = await meanNll(model, reference.first_valid_story.ids);
  assert.ok(Math.abs(nll - reference.first_valid_story.mean_nll_nats) < 0.001, `mean NLL ${nll}`);
});

test("--dtype fp16 adds onnx/model_fp16.onnx, which loads and matches the fp32 model closely", async (t) => {
  const files = sharedFiles(t, STORIES_GGUF);
  if (!files) return;
  const out = freshDir("fp16");
  let progress: [number, number] = [0, 0];
  await convertCheckpoint(files[0], out, { dtype: "fp16", onProgress: (done, total) => (progress = [done, total]) });
  assert.ok(progress[1] > 0 && progress[0] === progress[1], `progress ${progress}`);
  const fp32 = (await logitsOf((await load(out)).model, [BOS, 403, 407]))[2];
  const fp16 = (await logitsOf((await load(out, "fp16")).model, [BOS, 403, 407]))[2];
  assert.ok(statSync(join(out, "onnx/model_fp16.onnx")).size < statSync(join(out, "onnx/model.onnx")).size * 0.6);
  const worst = fp32.reduce((m, x, i) => Math.max(m, Math.abs(x - fp16[i])), 0);
  assert.ok(worst < 0.05, `fp16 logits differ by ${worst}`);
});

test("--dtype q8, q4 and q4f16 write the files transformers.js loads for those dtypes, each close to fp32", async (t) => {
  const files = sharedFiles(t, STORIES_GGUF);
  if (!files) return;
  const reference = sharedReference(t)?.["stories260K"];
  if (!reference) return;
  const story = reference.first_valid_story.ids;
  const fp32Dir = freshDir("fp32");
  await convertCheckpoint(files[0], fp32Dir);
  const fp32Size = statSync(join(fp32Dir, "onnx/model.onnx")).size;
  const fp32Nll = await meanNll((await load(fp32Dir)).model, story);
  // Measured on this model: files 0.38x, 0.29x and 0.23x of fp32; mean NLL +0.9% (q8), +8.5% (q4, q4f16).
  for (const [dtype, file, sizeRatio, nllRatio] of [["q8", "model_quantized.onnx", 0.45, 1.03], ["q4", "model_q4.onnx", 0.35, 1.15], ["q4f16", "model_q4f16.onnx", 0.3, 1.15]] as const) {
    const out = freshDir(dtype);
    await convertCheckpoint(files[0], out, { dtype });
    assert.deepEqual(readdirSync(join(out, "onnx")).sort(), ["model.onnx", file].sort());
    const size = statSync(join(out, "onnx", file)).size;
    assert.ok(size < fp32Size * sizeRatio, `${file}: ${size} bytes against ${fp32Size} for fp32`);
    const { model } = await load(out, dtype);
    const nll = await meanNll(model, story);
    t.diagnostic(`${dtype}: ${size} bytes (fp32 ${fp32Size}); mean NLL ${nll.toFixed(4)} (fp32 ${fp32Nll.toFixed(4)})`);
    assert.ok(nll < fp32Nll * nllRatio && nll > fp32Nll * 0.98, `${dtype} mean NLL ${nll} against fp32 ${fp32Nll}`);
  }
});

describe("resolveModelSource", () => {
  test("a checkpoint converted on first use holds the dtype asked, added to an earlier conversion", async (t) => {
    const files = sharedFiles(t, STORIES_GGUF);
    if (!files) return;
    const cacheDir = freshDir("dtype-cache");
    const converted = await resolveModelSource(files[0], { cacheDir, dtype: "fp16" });
    assert.deepEqual(readdirSync(join(converted, "onnx")).sort(), ["model.onnx", "model_fp16.onnx"]);
    const notices: string[] = [];
    assert.equal(await resolveModelSource(files[0], { cacheDir, dtype: "q4", onConvert: (_, target) => notices.push(target) }), converted);
    assert.deepEqual(notices, [join(converted, "onnx", "model_q4.onnx")]);
    assert.ok(existsSync(join(converted, "onnx", "model_q4.onnx")));
    await resolveModelSource(files[0], { cacheDir, dtype: "q4", onConvert: (_, target) => notices.push(target) });
    assert.equal(notices.length, 1, "a file already there is not written again");
    await load(converted, "q4");
    await assert.rejects(resolveModelSource(files[0], { cacheDir, dtype: "bnb4" }), /writes the dtypes fp32, fp16, q8, q4, q4f16, not bnb4/);
  });


  test("converts a checkpoint once into a folder keyed by its content, then reuses it", async (t) => {
    const files = sharedFiles(t, STORIES_BIN);
    if (!files) return;
    const cacheDir = freshDir("cache");
    // The one tok*.bin beside the checkpoint is its tokenizer.
    const first = await resolveModelSource(files[0], { cacheDir });
    assert.match(basename(first), /^[0-9a-f]{64}$/);
    const modelFile = join(first, "onnx/model.onnx");
    // Back-dated, because a rewrite within the file system's mtime granularity would keep a fresh mtime unchanged.
    const backdated = new Date("2001-01-01T00:00:00Z");
    utimesSync(modelFile, backdated, backdated);
    const written = statSync(modelFile);
    assert.equal(written.mtimeMs, backdated.getTime());
    assert.equal(await resolveModelSource(files[0], { cacheDir }), first);
    const reused = statSync(modelFile);
    assert.deepEqual([reused.mtimeMs, reused.ino, reused.size], [written.mtimeMs, written.ino, written.size], "the second call reused the conversion");
    assert.equal(await resolveModelSource(first, { cacheDir }), first, "a converted directory is used as is");
    const { tokenizer } = await load(first);
    assert.deepEqual(tokenizer.encode("Once upon a time"), [1, 403, 407, 261, 378]);
  });

  test("passes Hub ids through and refuses missing local paths", async () => {
    assert.equal(await resolveModelSource("Xenova/llama2.c-stories15M"), "Xenova/llama2.c-stories15M");
    await assert.rejects(resolveModelSource(join(work, "missing.gguf")), (error: Error) => {
      assert.ok(error instanceof ModelNotFoundError);
      assert.match(error.message, /missing\.gguf: not found locally \(no file or folder of that name\)/);
      return true;
    });
  });

  test("asks for the tokenizer when the llama2.c tokenizer beside a checkpoint is ambiguous", async (t) => {
    const files = sharedFiles(t, STORIES_BIN, STORIES_TOKENIZER);
    if (!files) return;
    const dir = freshDir("ambiguous");
    mkdirSync(dir);
    symlinkSync(files[0], join(dir, "model.bin"));
    symlinkSync(files[1], join(dir, "tokenizer.bin"));
    symlinkSync(files[1], join(dir, "tok512.bin"));
    await assert.rejects(resolveModelSource(join(dir, "model.bin"), { cacheDir: freshDir("cache") }), (error: Error) => {
      assert.ok(error instanceof ConversionError);
      assert.match(error.message, /model\.bin: .*--tokenizer.*found tok512\.bin, tokenizer\.bin/);
      return true;
    });
    // Named explicitly, it converts.
    const cacheDir = freshDir("cache");
    const dirOut = await resolveModelSource(join(dir, "model.bin"), { cacheDir, tokenizer: join(dir, "tok512.bin") });
    assert.ok(existsSync(join(dirOut, "onnx/model.onnx")));
  });
});

describe("failed conversions leave nothing behind", () => {
  const assertNothingLeft = (out: string) => {
    assert.ok(!existsSync(out), "no output directory");
    assert.deepEqual(
      readdirSync(join(out, "..")).filter((name) => name.startsWith(`.${basename(out)}.partial`)),
      [],
      "no staging directory",
    );
  };

  test("a truncated checkpoint fails before writing, naming the file and the problem", async (t) => {
    const files = sharedFiles(t, STORIES_BIN, STORIES_TOKENIZER);
    if (!files) return;
    const truncated = join(work, "truncated.bin");
    writeFileSync(truncated, readFileSync(files[0]).subarray(0, 500_000));
    const out = freshDir("truncated-out");
    await assert.rejects(convertCheckpoint(truncated, out, { tokenizer: files[1] }), (error: Error) => {
      assert.ok(error instanceof ConversionError);
      assert.match(error.message, /truncated\.bin: .*(truncated|describes)/);
      return true;
    });
    assertNothingLeft(out);
  });

  test("an error while writing the ONNX model removes the partial directory", async (t) => {
    const files = sharedFiles(t, STORIES_GGUF);
    if (!files) return;
    const checkpoint = openCheckpoint(files[0]);
    const out = freshDir("failing-out");
    let loads = 0;
    const failing = new Map(
      [...checkpoint.tensors].map(([name, entry]) => [
        name,
        {
          shape: entry.shape,
          load() {
            if (++loads === 5) throw new ConversionError(checkpoint.source, "simulated read failure");
            return entry.load();
          },
        },
      ]),
    );
    try {
      await assert.rejects(writeModelDirectory({ ...checkpoint, tensors: failing }, out), /simulated read failure/);
    } finally {
      checkpoint.close();
    }
    assertNothingLeft(out);
  });

  test("an existing, non-empty output directory is refused", async (t) => {
    const files = sharedFiles(t, STORIES_GGUF);
    if (!files) return;
    const out = freshDir("occupied");
    mkdirSync(out);
    writeFileSync(join(out, "keep.txt"), "mine");
    await assert.rejects(convertCheckpoint(files[0], out), /already exists and is not an empty directory/);
    assert.equal(readFileSync(join(out, "keep.txt"), "utf8"), "mine");
  });
});

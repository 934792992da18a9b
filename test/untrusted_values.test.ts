/**
 * Values a reader would take at their word: impossible config and metadata numbers (each refused where it
 * is read, naming the file and the field), NaN, infinite and fp16-overflowing weights (refused while
 * converting, naming the tensor), a converted directory whose tokenizer cannot serve the model (refused
 * before it enters the conversion cache), and the messages for missing files and fields.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cp, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AutoModelForCausalLM, ConversionError, convertCheckpoint, resolveModelSource } from "../src/index.js";
import { memorySource } from "../src/convert/bounded_reader.js";
import { readGgufCheckpoint } from "../src/convert/gguf_llama.js";
import type { GgufValue } from "../src/convert/gguf.js";
import { loadTransformersBackend } from "../src/transformers/backend.js";
import { tinyLlamaGguf, writeTinyLlamaDirectory } from "./support/checkpoint_files.js";
import { runCli } from "./support/cli.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";

const work = mkdtempSync(join(tmpdir(), "attention-sinks-values-"));
after(() => rmSync(work, { recursive: true, force: true }));
let dirs = 0;
const fresh = (name: string) => join(work, `${name}-${++dirs}`);

/** Checks a rejection: a ConversionError about `file` whose message matches `pattern` and names no missing value as undefined or null. */
function conversionError(file: string, pattern: RegExp) {
  return (error: Error) => {
    assert.ok(error instanceof ConversionError, `not a ConversionError: ${error.stack}`);
    assert.equal(error.file, file);
    assert.match(error.problem, pattern);
    assert.doesNotMatch(error.message, /undefined|\bnull\b/);
    return true;
  };
}

/** `config.json` with `key` set to `raw`, written as JSON text as it is (`1e400` parses as Infinity). */
async function setRaw(dir: string, key: string, raw: string): Promise<void> {
  const config = JSON.parse(await readFile(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
  config[key] = "\u0000raw";
  await writeFile(join(dir, "config.json"), JSON.stringify(config, null, 2).replace('"\\u0000raw"', raw));
}

/** Impossible config values: the key, its JSON text, and what the message must say. */
const CONFIG_CASES: [string, string, RegExp][] = [
  ["rope_theta", "0", /rope_theta is 0, expected a finite positive number/],
  ["rope_theta", "-10000", /rope_theta is -10000, expected a finite positive number/],
  ["rope_theta", "1e400", /rope_theta is Infinity, expected a finite number/],
  ["rope_scaling", '{"rope_type": "linear", "factor": 0}', /rope_scaling\.factor \(linear\) is 0, expected a finite positive number/],
  ["rope_scaling", '{"rope_type": "linear", "factor": -2}', /rope_scaling\.factor \(linear\) is -2/],
  ["rope_scaling", '{"rope_type": "linear", "factor": 1e400}', /rope_scaling\.factor \(linear\) is Infinity/],
  ["rope_scaling", '{"rope_type": "dynamic", "factor": 0}', /rope_scaling\.factor \(dynamic\) is 0/],
  ["max_position_embeddings", "0", /max_position_embeddings is 0, expected a positive integer/],
  ["max_position_embeddings", "-5", /max_position_embeddings is -5, expected a positive integer/],
  ["num_key_value_heads", '"2"', /num_key_value_heads is "2", expected a finite number/],
  ["num_hidden_layers", '"2"', /num_hidden_layers is "2", expected a finite number/],
];

describe("impossible numbers are refused where they are read, naming the file and the field", () => {
  it("GGUF metadata: norm epsilon, RoPE base and linear RoPE factor not finite and positive, a context length of 0", () => {
    const cases: [string, GgufValue, RegExp][] = [];
    for (const value of [Infinity, NaN, 0, -1e-5]) {
      cases.push(["llama.attention.layer_norm_rms_epsilon", value, /metadata llama\.attention\.layer_norm_rms_epsilon is .+, expected a finite positive number/]);
    }
    for (const value of [0, -1, Infinity, NaN]) {
      cases.push(["llama.rope.freq_base", value, /metadata llama\.rope\.freq_base is .+, expected a finite positive number/]);
      cases.push(["llama.rope.scaling.factor", value, /metadata llama\.rope\.scaling\.factor is .+, expected a finite positive number/]);
    }
    cases.push(["llama.context_length", 0, /metadata llama\.context_length is 0, expected an integer of at least 1/]);
    const read = (edit: (metadata: Map<string, GgufValue>) => void) => readGgufCheckpoint(memorySource("m.gguf", tinyLlamaGguf({ metadata: edit })));
    for (const [key, value, pattern] of cases) {
      const edit = (metadata: Map<string, GgufValue>) => {
        if (key.includes("scaling")) metadata.set("llama.rope.scaling.type", "linear");
        metadata.set(key, value);
      };
      assert.throws(() => read(edit), conversionError("m.gguf", pattern), `${key} = ${value}`);
    }
    // The same file with usable values reads.
    const scaled = read((metadata) => metadata.set("llama.rope.scaling.type", "linear").set("llama.rope.scaling.factor", 2));
    assert.deepEqual(scaled.spec.positions.kind === "rope" && scaled.spec.positions.rope.scaling, { rope_type: "linear", factor: 2 });
  });

  it("a Hugging Face config.json to convert: the same values, and a norm epsilon that is not finite and positive", async () => {
    const cases: [string, string, RegExp][] = [
      ...CONFIG_CASES,
      ["rms_norm_eps", "1e400", /rms_norm_eps is Infinity, expected a finite positive number/],
      ["rms_norm_eps", "0", /rms_norm_eps is 0, expected a finite positive number/],
      ["rms_norm_eps", "-1e-6", /rms_norm_eps is -0\.000001, expected a finite positive number/],
    ];
    for (const [key, raw, pattern] of cases) {
      const dir = await writeTinyLlamaDirectory(fresh("hf-config"));
      await setRaw(dir, key, raw);
      const out = fresh("hf-config-out");
      await assert.rejects(convertCheckpoint(dir, out), conversionError(join(dir, "config.json"), pattern), `${key} = ${raw}`);
      assert.equal(existsSync(out), false);
    }
  });

  it("a transformers.js model directory: the same values are refused when it loads, before the cache re-rotates keys with them", async () => {
    const original = fresh("text-model");
    await writeTinyTextModel(original, "llama", { seed: 1 });
    for (const [key, raw, pattern] of CONFIG_CASES) {
      const dir = fresh("load-config");
      await cp(original, dir, { recursive: true });
      await setRaw(dir, key, raw);
      await assert.rejects(loadTransformersBackend(dir), conversionError(join(dir, "config.json"), pattern), `${key} = ${raw}`);
      if (key === "rope_theta") {
        await assert.rejects(AutoModelForCausalLM.from_pretrained(dir), conversionError(join(dir, "config.json"), pattern));
      }
    }
    assert.equal((await (await loadTransformersBackend(original)).feed([1, 2])).length, 64);
  });

  it("the command line reports such a value in one line, naming the file and the field, and exits 1", async () => {
    const dir = fresh("cli-config");
    await writeTinyTextModel(dir, "llama", { seed: 1 });
    await setRaw(dir, "rope_theta", "-1");
    const run = await runCli(["generate", "--model_name_or_path", dir, "--prompt", "the cat", "--max_new_tokens", "2"]);
    assert.equal(run.code, 1);
    assert.equal(run.stderr, `attention-sinks generate: ${join(dir, "config.json")}: rope_theta is -1, expected a finite positive number\n`);
    assert.equal(run.stdout, "");
  });
});

describe("weights are scanned while converting", () => {
  const NAME = "model.layers.1.mlp.up_proj.weight";

  it("a NaN weight is refused, naming the tensor, and leaves nothing behind", async () => {
    const dir = await writeTinyLlamaDirectory(fresh("nan-weight"), { weights: (weights) => void (weights.get(NAME)!.data[5] = NaN) });
    const out = fresh("nan-weight-out");
    await assert.rejects(
      convertCheckpoint(dir, out),
      conversionError(dir, /the weight model\.layers\.1\.mlp\.up_proj\.weight holds NaN at index 5 \(1 of its 2048 values are not finite\): the checkpoint is corrupt/),
    );
    assert.deepEqual(await readdir(work).then((names) => names.filter((name) => name.includes("nan-weight-out"))), []);
  });

  it("an infinite GGUF weight is refused, naming the tensor as the file does", async () => {
    const path = join(work, "inf-weight.gguf");
    await writeFile(path, tinyLlamaGguf({ weights: (weights) => weights.get("lm_head.weight")!.data.fill(-Infinity, 10, 13) }));
    await assert.rejects(
      convertCheckpoint(path, fresh("inf-weight-out")),
      conversionError(path, /the weight lm_head\.weight \(output\.weight in the file\) holds -Infinity at index 10 \(3 of its 2048 values/),
    );
  });

  it("--dtype fp16 refuses a weight that float16 would store as Infinity, and converts one it can round", async () => {
    const big = await writeTinyLlamaDirectory(fresh("fp16-overflow"), { weights: (weights) => void (weights.get(NAME)!.data[7] = 1e6) });
    await assert.rejects(
      convertCheckpoint(big, fresh("fp16-overflow-out"), { dtype: "fp16" }),
      conversionError(big, /the weight model\.layers\.1\.mlp\.up_proj\.weight holds 1000000 at index 7, beyond float16's largest value 65504: an fp16 export would store it as Infinity/),
    );
    const fp32 = fresh("fp16-overflow-fp32");
    await convertCheckpoint(big, fp32);
    assert.ok(existsSync(join(fp32, "onnx", "model.onnx")));
    // 65519 rounds to 65504, the largest float16.
    const edge = await writeTinyLlamaDirectory(fresh("fp16-edge"), { weights: (weights) => void (weights.get(NAME)!.data[7] = -65519) });
    const edgeOut = fresh("fp16-edge-out");
    await convertCheckpoint(edge, edgeOut, { dtype: "fp16" });
    assert.ok(existsSync(join(edgeOut, "onnx", "model_fp16.onnx")));
  });
});

describe("a converted directory is checked before it enters the conversion cache", () => {
  /** Replaces the tokenizer's vocabulary with its first `keep` tokens (none: an empty one). */
  async function truncateVocabulary(dir: string, keep: number): Promise<void> {
    const path = join(dir, "tokenizer.json");
    const tokenizer = JSON.parse(await readFile(path, "utf8")) as { model: { vocab: Record<string, number>; merges: unknown[] }; added_tokens: { id: number }[] };
    tokenizer.model.vocab = Object.fromEntries(Object.entries(tokenizer.model.vocab).filter(([, id]) => id < keep));
    tokenizer.model.merges = [];
    tokenizer.added_tokens = tokenizer.added_tokens.filter((token) => token.id < keep);
    await writeFile(path, JSON.stringify(tokenizer));
  }

  for (const [name, keep, pattern] of [
    ["much smaller than the vocabulary", 5, /its tokenizer\.json covers 5 token ids, but the model has a vocabulary of 64: the tokenizer is truncated or belongs to another model/],
    ["with an empty vocabulary", 0, /its tokenizer\.json has no vocabulary/],
  ] as const) {
    it(`a tokenizer.json ${name} is refused, naming the source, and nothing is cached`, async () => {
      const dir = await writeTinyLlamaDirectory(fresh("small-tokenizer"));
      await truncateVocabulary(dir, keep);
      const cacheDir = fresh("cache");
      await mkdir(cacheDir);
      await assert.rejects(resolveModelSource(dir, { cacheDir }), conversionError(dir, pattern));
      assert.deepEqual(await readdir(cacheDir), []);
    });
  }

  it("an intact directory is converted into the cache once", async () => {
    const dir = await writeTinyLlamaDirectory(fresh("intact"));
    const cacheDir = fresh("cache");
    const converted = await resolveModelSource(dir, { cacheDir });
    assert.deepEqual(await readdir(cacheDir), [converted.slice(cacheDir.length + 1)]);
    assert.equal(await resolveModelSource(dir, { cacheDir }), converted);
  });
});

describe("messages name what is missing", () => {
  it("a transformers.js directory without onnx/ is told it lacks the ONNX graph", async () => {
    const dir = fresh("no-onnx");
    await writeTinyTextModel(dir, "llama");
    await rm(join(dir, "onnx"), { recursive: true });
    await assert.rejects(loadTransformersBackend(dir), conversionError(dir, /has no ONNX graph \(onnx\/model\.onnx\) to load as a transformers\.js model/));
  });

  it("an empty, directory or pipe onnx/model.onnx is named, before onnxruntime reads it", async () => {
    const dir = fresh("empty-onnx");
    await writeTinyTextModel(dir, "llama");
    const graph = join(dir, "onnx", "model.onnx");
    await writeFile(graph, "");
    await assert.rejects(loadTransformersBackend(dir), conversionError(graph, /is empty \(0 bytes\)/));
    await rm(graph);
    await mkdir(graph);
    await assert.rejects(loadTransformersBackend(dir), conversionError(graph, /is a directory, not an ONNX graph file/));
    await rm(graph, { recursive: true });
    // A named pipe would block onnxruntime's read for ever.
    execFileSync("mkfifo", [graph]);
    await assert.rejects(loadTransformersBackend(dir), conversionError(graph, /is not a regular file/));
    await rm(graph);
    await assert.rejects(loadTransformersBackend(dir), conversionError(join(dir, "onnx"), /holds no \.onnx file/));
  });

  it("a config.json without a required field says which is missing, never undefined or null", async () => {
    const cases: [string, RegExp][] = [
      ["model_type", /model_type is missing/],
      ["vocab_size", /vocab_size is missing/],
      ["hidden_size", /hidden_size is missing/],
      ["intermediate_size", /intermediate_size is missing/],
      ["num_attention_heads", /no attention head count \(looked for num_attention_heads/],
      ["num_hidden_layers", /no layer count \(looked for num_hidden_layers/],
    ];
    for (const [key, pattern] of cases) {
      const dir = await writeTinyLlamaDirectory(fresh(`missing-${key}`), { config: (config) => void delete config[key] });
      await assert.rejects(convertCheckpoint(dir, fresh("missing-out")), conversionError(join(dir, "config.json"), pattern), key);
    }
  });
});

/** `attention-sinks convert` as a user runs it, and loading checkpoints by name through the package. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import * as transformers from "@huggingface/transformers";
import { Tensor } from "@huggingface/transformers";
import { AutoModelForCausalLM, AutoTokenizer } from "../src/index.js";
import { StreamingReference } from "./support/reference/streaming_reference.js";
import { runCli } from "./support/cli.js";
import { sharedFiles, sharedReference } from "./support/shared_data.js";
import { meanNextTokenNll, readLlama2cWeights } from "./support/shared_weights.js";
import { logitsAt, maxAbsDiff } from "./support/streaming.js";

const run = promisify(execFile);

const cli = (args: string[], env: NodeJS.ProcessEnv = {}) => runCli(args, { env });

describe("attention-sinks convert", () => {
  it("converts a llama2.c checkpoint that the package then loads and tokenizes", async (t) => {
    const files = sharedFiles(t, "models/stories260K/stories260K.bin", "models/stories260K/tok512.bin");
    if (!files) return;
    const root = await mkdtemp(join(tmpdir(), "attention-sinks-cli-convert-"));
    t.after(() => rm(root, { recursive: true, force: true }));
    const out = join(root, "stories260K");
    const result = await cli(["convert", files[0], out, "--tokenizer", files[1]]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /converted .*stories260K\.bin -> .* in \d+\.\d s/);
    assert.deepEqual((await readdir(out)).sort(), ["config.json", "generation_config.json", "onnx", "tokenizer.json", "tokenizer_config.json"]);
    const tokenizer = await AutoTokenizer.from_pretrained(out);
    assert.deepEqual(tokenizer.encode("Once upon a time"), [1, 403, 407, 261, 378]);
    const model = await AutoModelForCausalLM.from_pretrained(out, { attention_sink_size: 4, attention_sink_window_size: 60 });
    assert.equal(model.attention_sinks.capacity, 64);

    // The converted weights compute the model: plain transformers.js on the output directory against references
    // that never go through the converter (llama2.c's own measurements, and the oracle on the checkpoint's
    // weights read by run.c's layout, Q and K unpermuted).
    const reference = sharedReference(t)?.stories260K;
    if (!reference) return;
    const plain = await transformers.AutoModelForCausalLM.from_pretrained(out, { local_files_only: true });
    const story = reference.first_valid_story.ids;
    const input_ids = new Tensor("int64", BigInt64Array.from(story, BigInt), [1, story.length]);
    const attention_mask = new Tensor("int64", new BigInt64Array(story.length).fill(1n), [1, story.length]);
    const { logits } = (await plain({ input_ids, attention_mask })) as { logits: Tensor };
    assert.deepEqual(logits.dims, [1, story.length, 512]);
    const rows = story.map((_, i) => logitsAt(logits, 0, i));
    const { spec, weights } = readLlama2cWeights(files[0]);
    const expected = new StreamingReference(spec, weights, { sink_size: 0, window_size: null }).forward(story);
    assert.equal(expected.length, story.length);
    for (const [i, row] of rows.entries()) {
      const diff = maxAbsDiff(row, expected[i]);
      assert.ok(diff < 1e-4, `logits of token ${i} differ from the oracle by ${diff}`);
    }
    const nll = meanNextTokenNll(rows, story);
    assert.ok(Math.abs(nll - reference.first_valid_story.mean_nll_nats) < 1e-3, `mean NLL ${nll}, llama2.c ${reference.first_valid_story.mean_nll_nats}`);
    const greedy = (await plain.generate({ inputs: new Tensor("int64", BigInt64Array.of(1n), [1, 1]), max_new_tokens: 64, do_sample: false })) as Tensor;
    assert.deepEqual(Array.from(greedy.data as BigInt64Array, Number).slice(1), reference.greedy_from_BOS_ids_first64);
    await plain.dispose();
  });

  it("from_pretrained and AutoTokenizer take a checkpoint directly, converting it once into the cache", async (t) => {
    const files = sharedFiles(t, "models/tinystories-656k/model.safetensors");
    if (!files) return;
    const source = join(files[0], "..");
    const cache = await mkdtemp(join(tmpdir(), "attention-sinks-cache-"));
    t.after(() => rm(cache, { recursive: true, force: true }));
    const script = `
      const { AutoModelForCausalLM, AutoTokenizer } = await import(${JSON.stringify(new URL("../src/index.js", import.meta.url).href)});
      const model = await AutoModelForCausalLM.from_pretrained(${JSON.stringify(source)}, { attention_sink_window_size: 100 });
      const tokenizer = await AutoTokenizer.from_pretrained(${JSON.stringify(source)});
      console.log(JSON.stringify({ capacity: model.attention_sinks.capacity, ids: tokenizer.encode("Once upon a time").length > 0 }));`;
    for (let i = 0; i < 2; i++) {
      const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script], { env: { ...process.env, ATTENTION_SINKS_CACHE: cache } });
      assert.deepEqual(JSON.parse(stdout), { capacity: 104, ids: true });
      assert.equal((await readdir(cache)).length, 1, "converted once, then reused");
    }
  });

  it("errors: a missing source exits 1 naming it; wrong arguments exit 2 with the usage", async () => {
    const missing = await cli(["convert", "/nonexistent/model.gguf", join(tmpdir(), "never")]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /\/nonexistent\/model\.gguf: does not exist/);
    const usage = await cli(["convert", "only-one"]);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /expected SOURCE OUT, got only-one/);
    const dtype = await cli(["convert", "a", "b", "--dtype", "int4"]);
    assert.equal(dtype.code, 2);
    assert.match(dtype.stderr, /--dtype must be one of fp32, fp16, q8, q4, q4f16; got "int4"/);
  });
});

/** `attention-sinks convert` as a user runs it, and loading checkpoints by name through the package. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { AutoModelForCausalLM, AutoTokenizer } from "../src/index.js";
import { runCli } from "./support/cli.js";
import { sharedFiles } from "./support/shared_data.js";

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
    assert.match(usage.stderr, /expected SOURCE OUT_DIR/);
    const dtype = await cli(["convert", "a", "b", "--dtype", "int4"]);
    assert.equal(dtype.code, 2);
    assert.match(dtype.stderr, /--dtype must be one of fp32, fp16; got "int4"/);
  });
});

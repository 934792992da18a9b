/**
 * Command-line conventions, as a user meets them in a child process: --version, -h and `help <command>`,
 * kebab-case aliases, negative numbers after a flag, decimal numbers only, "did you mean" for a misspelt
 * flag, and advice that names the option actually at fault.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runCli } from "./support/cli.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";

const root = await mkdtemp(join(tmpdir(), "attention-sinks-cli-conventions-"));
after(() => rm(root, { recursive: true, force: true }));
const model = join(root, "model");
await writeTinyTextModel(model, "llama", { seed: 7 });

describe("CLI conventions", () => {
  it("--version prints the package's version", async () => {
    const { version } = JSON.parse(await readFile(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
    for (const flag of ["--version", "-V"]) {
      const run = await runCli([flag]);
      assert.equal(run.code, 0);
      assert.equal(run.stdout, `attention-sinks ${version}\n`);
    }
  });

  it("-h and help <command> print the command's help", async () => {
    const long = await runCli(["perplexity", "--help"]);
    assert.equal(long.code, 0);
    assert.match(long.stdout, /^usage: attention-sinks perplexity/);
    for (const args of [["perplexity", "-h"], ["help", "perplexity"]]) {
      const run = await runCli(args);
      assert.equal(run.code, 0, args.join(" "));
      assert.equal(run.stdout, long.stdout, args.join(" "));
    }
  });

  it("kebab-case aliases and a negative value after a flag reach the same checks", async () => {
    const kebab = await runCli(["generate", "--model-name-or-path", model, "--prompt", "the", "--max-new-tokens", "7"]);
    assert.equal(kebab.code, 0, kebab.stderr);
    assert.match(kebab.stderr, /^7 tokens in /m);
    const negative = await runCli(["generate", "--model_name_or_path", model, "--prompt", "the", "--attention_sink_size", "-1"]);
    assert.equal(negative.code, 2);
    assert.match(negative.stderr, /--attention_sink_size must be at least 0, got -1/);
  });

  it("numbers are decimal; a misspelt flag gets a suggestion", async () => {
    for (const value of ["0x10", "1e", " ", "0b1"]) {
      const run = await runCli(["generate", "--model_name_or_path", model, "--max_new_tokens", value]);
      assert.equal(run.code, 2, value);
      assert.match(run.stderr, /--max_new_tokens must be an integer/, value);
    }
    const typo = await runCli(["generate", "--model_name_or_path", model, "--max_new_token", "5"]);
    assert.equal(typo.code, 2);
    assert.match(typo.stderr, /unknown option '--max_new_token'; did you mean --max_new_tokens\?/);
    const unrelated = await runCli(["generate", "--model_name_or_path", model, "--colour", "5"]);
    assert.match(unrelated.stderr, /unknown option '--colour'\n/);
  });

  it("sinks that fill the model's context are blamed, not the window", async () => {
    const run = await runCli(["generate", "--model_name_or_path", model, "--prompt", "the", "--attention_sink_size", "64"]);
    assert.equal(run.code, 2);
    assert.match(run.stderr, /--attention_sink_size 64 leaves no room for a window in the 64 positions .* use --attention_sink_size < 64/);
  });
});

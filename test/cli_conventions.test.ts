/**
 * Command-line conventions, as a user meets them in a child process: --version, -h and `help <command>`,
 * kebab-case aliases, negative numbers after a flag, decimal numbers only, "did you mean" for a misspelt
 * flag, and advice that names the option actually at fault.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runCli } from "./support/cli.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";
import { sharedFiles } from "./support/shared_data.js";

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

describe("one overwrite policy for every command that writes files", () => {
  it("perplexity leaves no CSV for a dataset too short to evaluate, and refuses to replace one", async () => {
    const out = join(root, "ppl-empty");
    const data = join(root, "one-word.txt");
    await writeFile(data, "");
    const empty = await runCli(["perplexity", "--model_name_or_path", model, "--dataset_name", data, "--output_dir", out, "--window_size", "16", "--attention_sink_size", "2"]);
    assert.equal(empty.code, 1, empty.stderr);
    assert.match(empty.stderr, /no token was evaluated.*no CSV was written/);
    assert.equal(existsSync(join(out, "attention_sinks.csv")), false);
  });

  it("plot refuses to replace a plot without --overwrite, and reports an empty plot as an error", async () => {
    const out = join(root, "ppl");
    const data = join(root, "story.txt");
    await writeFile(data, "once upon a time the cat sat on the mat and she was happy. ".repeat(20));
    for (const experiment of ["attention_sinks", "windowed"]) {
      const run = await runCli(["perplexity", "--experiment", experiment, "--model_name_or_path", model, "--dataset_name", data, "--output_dir", out, "--num_tokens", "60", "--window_size", "16", "--attention_sink_size", "2"]);
      assert.equal(run.code, 0, run.stderr);
    }
    const plot = (...extra: string[]) => runCli(["plot", "--output_dir", out, "--skip_first", "0", ...extra]);
    assert.equal((await plot()).code, 0);
    const again = await plot();
    assert.equal(again.code, 2);
    assert.match(again.stderr, /perplexity\.png and .*perplexity\.svg already exist; pass --overwrite to replace them/);
    assert.equal((await plot("--overwrite")).code, 0);
    const nothing = await runCli(["plot", "--output_dir", out, "--skip_first", "500", "--output", join(root, "empty.png")]);
    assert.equal(nothing.code, 2);
    assert.match(nothing.stderr, /nothing to plot: .*--skip_first 500 skips them all/);
    assert.equal(existsSync(join(root, "empty.png")), false);
  });

  it("generate refuses to replace --output or --stats_json without --overwrite, before loading the model", async () => {
    const text = join(root, "text.txt");
    await writeFile(text, "keep me");
    const refused = await runCli(["generate", "--model_name_or_path", join(root, "no-such-model"), "--prompt", "the", "--output", text]);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /--output .*text\.txt already exists; pass --overwrite to replace it/);
    assert.equal(await readFile(text, "utf8"), "keep me");
    const replaced = await runCli(["generate", "--model_name_or_path", model, "--prompt", "the", "--max_new_tokens", "3", "--output", text, "--overwrite"]);
    assert.equal(replaced.code, 0, replaced.stderr);
    assert.notEqual(await readFile(text, "utf8"), "keep me");
  });
});

describe("generate's text options and first-use conversion", () => {
  it("--stop ends the text before a stop string, --hide_prompt writes only the continuation", async () => {
    const args = ["generate", "--model_name_or_path", model, "--prompt", "the cat", "--max_new_tokens", "40", "--min_new_tokens", "40"];
    const full = await runCli(args);
    assert.equal(full.code, 0, full.stderr);
    assert.ok(full.stdout.startsWith("the cat"));
    const continuation = full.stdout.slice("the cat".length).trimEnd();
    // A stop string from the middle whose first occurrence is there.
    let at = 10;
    while (at + 3 <= continuation.length && continuation.indexOf(continuation.slice(at, at + 3)) !== at) at++;
    const stop = continuation.slice(at, at + 3);
    assert.ok(stop.length === 3, `no stop string found in "${continuation}"`);
    const stopped = await runCli([...args, "--stop", stop, "--hide_prompt"]);
    assert.equal(stopped.code, 0, stopped.stderr);
    assert.equal(stopped.stdout.trimEnd(), continuation.slice(0, continuation.indexOf(stop)).trimEnd());
    assert.match(stopped.stderr, /stopped: stop_string/);
  });

  it("says when a checkpoint is converted on first use, and where to; --tokenizer names its tokenizer", async (t) => {
    const files = sharedFiles(t, "models/stories260K/stories260K.bin", "models/stories260K/tok512.bin");
    if (!files) return;
    const [checkpoint, tokenizer] = files;
    const env = { ...process.env, ATTENTION_SINKS_CACHE: join(root, "conversions") };
    const args = ["generate", "--model_name_or_path", checkpoint, "--tokenizer", tokenizer, "--prompt", "Once", "--max_new_tokens", "3"];
    const first = await runCli(args, { env });
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, new RegExp(`^converting ${checkpoint.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} on first use into ${join(root, "conversions")}/[0-9a-f]{64}$`, "m"));
    const second = await runCli(args, { env });
    assert.equal(second.code, 0, second.stderr);
    assert.doesNotMatch(second.stderr, /converting/);
  });
});

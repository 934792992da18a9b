/**
 * Paths a careless user gives, in a child process: output folders that are files or sit under one, output
 * files in folders that do not exist yet, a conversion cache inside a file, and datasets that are not what
 * they seem. Each is reported by path, with what is wrong and what to do, not as a raw errno.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describeFileError } from "../src/platform/output_paths.js";
import { runCli } from "./support/cli.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";
import { sharedFiles } from "./support/shared_data.js";

const root = await mkdtemp(join(tmpdir(), "attention-sinks-cli-paths-"));
after(() => rm(root, { recursive: true, force: true }));
const model = join(root, "model");
await writeTinyTextModel(model, "llama", { seed: 7 });
const aFile = join(root, "a-file");
await writeFile(aFile, "not a folder");
const text = join(root, "story.txt");
await writeFile(text, "a b a b a b a b a b a b a b a b a b a b a b a b a b a b a b\n");

const perplexity = (...args: string[]) =>
  runCli(["perplexity", "--model_name_or_path", model, "--num_tokens", "8", "--attention_sink_window_size", "6", ...args]);
const generate = (...args: string[]) => runCli(["generate", "--model_name_or_path", model, "--prompt", "a b", "--max_new_tokens", "3", ...args]);

function assertFails(run: { code: number | null; stderr: string }, message: RegExp): void {
  assert.equal(run.code, 1, run.stderr);
  assert.match(run.stderr, message);
  assert.doesNotMatch(run.stderr, /\bE[A-Z]{3,}\b: /, "a raw errno message");
}

describe("output paths", () => {
  it("perplexity: an --output_dir that is a file, or inside one, is named before anything runs", async () => {
    assertFails(await perplexity("--dataset_name", text, "--output_dir", aFile), /a-file: is a file, not a folder; give a folder/);
    const nested = join(aFile, "outputs");
    assertFails(await perplexity("--dataset_name", text, "--output_dir", nested), /a-file\/outputs: cannot be made: .*a-file is a file, not a folder/);
  });

  it("generate: --output and --stats_json in a folder that does not exist yet are written, with the folder made", async () => {
    const output = join(root, "new", "deeper", "text.txt");
    const stats = join(root, "new", "stats", "run.jsonl");
    const run = await generate("--output", output, "--stats_json", stats);
    assert.equal(run.code, 0, run.stderr);
    assert.ok((await readFile(output, "utf8")).startsWith("a b"));
    assert.ok(existsSync(stats));
  });

  it("generate: an output that is a folder, or under a file, is named", async () => {
    const folder = join(root, "a-folder");
    await mkdir(folder);
    assertFails(await generate("--output", folder, "--overwrite"), /a-folder: is a folder; give a file name/);
    assertFails(await generate("--stats_json", join(aFile, "stats.jsonl")), /a-file\/stats\.jsonl: cannot be written: .*a-file is a file, not a folder/);
  });

  it("convert: a target inside a file is named", async (t) => {
    const files = sharedFiles(t, "models/stories260K/stories260K.bin");
    if (!files) return;
    assertFails(await runCli(["convert", files[0], join(aFile, "converted")]), /a-file\/converted: cannot be written: .*a-file is a file, not a folder/);
  });

  it("a conversion cache (ATTENTION_SINKS_CACHE) inside a file is named as the conversion cache", async (t) => {
    const files = sharedFiles(t, "models/stories260K/stories260K.bin");
    if (!files) return;
    const cache = join(aFile, "cache");
    const run = await runCli(["generate", "--model_name_or_path", files[0], "--prompt", "Once", "--max_new_tokens", "2"], {
      env: { ATTENTION_SINKS_CACHE: cache },
    });
    assertFails(run, /a-file\/cache: the conversion cache \(set by ATTENTION_SINKS_CACHE\): cannot be made: .*a-file is a file, not a folder/);
  });

  it("an unforeseen file-system error names its path", () => {
    const error = Object.assign(new Error("EACCES: permission denied, open '/x/y'"), { code: "EACCES", path: "/x/y" });
    assert.equal(describeFileError(error), "/x/y: permission denied");
    assert.equal(describeFileError(new Error("other")), null);
  });
});

describe("datasets", () => {
  it("a parquet file that is not one is named", async () => {
    const bad = join(root, "rows.parquet");
    await writeFile(bad, "not parquet at all");
    assertFails(await perplexity("--dataset_name", bad, "--output_dir", join(root, "bad-parquet")), /rows\.parquet: not a readable parquet file/);
    assert.equal(existsSync(join(root, "bad-parquet", "attention_sinks.csv")), false);
  });

  it("a .jsonl row whose text is a number says so", async () => {
    const rows = join(root, "rows.jsonl");
    await writeFile(rows, '{"text": 5}\n');
    assertFails(await perplexity("--dataset_name", rows, "--output_dir", join(root, "numbers")), /rows\.jsonl, row 0: its "text" column holds a number \(5\), not text/);
  });

  it("a folder reads the format most of its files have; a tie is an error naming them", async () => {
    const folder = join(root, "mixed");
    await mkdir(folder);
    await writeFile(join(folder, "reference.json"), JSON.stringify({ notes: "not a sample" }));
    await writeFile(join(folder, "one.txt"), "a b a b a b a b a b a b");
    const tie = await perplexity("--dataset_name", folder, "--output_dir", join(root, "tie"));
    assertFails(tie, /mixed holds as many files of one format as of another \(\.json: reference\.json; \.txt: one\.txt\)/);
    await writeFile(join(folder, "two.txt"), "b a b a b a b a b a b a");
    const run = await perplexity("--dataset_name", folder, "--output_dir", join(root, "majority"));
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /attention_sinks: 8 tokens/);
  });
});

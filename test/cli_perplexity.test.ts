/**
 * `attention-sinks perplexity` as a user runs it, in a child process on a tiny fixture model with a tokenizer:
 * the CSV of each experiment against the StreamingLLM oracle, refusal to overwrite, an interrupted run, bad
 * flags and an unreachable Hub.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AutoTokenizer } from "@huggingface/transformers";
import { CSV_COLUMNS, parseBenchmarkCsv, type Experiment } from "../src/perplexity/index.js";
import { writeTinyTokenizer } from "./support/fixtures/tiny_tokenizer.js";
import { StreamingReference, referenceNll, type ReferencePolicy } from "./support/reference/streaming_reference.js";
import { runCli, type CliOptions } from "./support/cli.js";
import { fixture, type Fixture } from "./support/streaming.js";

const cli = (args: readonly string[], options?: CliOptions) => runCli(["perplexity", ...args], options);

const TOLERANCE = 1e-4;
const SINKS = 2;
const WINDOW = 8;
const TOKENS = 40;
const SENTENCES = "the cat sat on the mat. she was happy, and the dog ran to the park!\nwhat a day it was.\n";

/** A tiny Llama with the tiny tokenizer, and a text file of `repeat` copies of the sentences. */
async function setup(repeat = 3): Promise<{ f: Fixture; text: string; data: string; out: string }> {
  const f = await fixture("llama");
  await writeTinyTokenizer(f.dir);
  const dir = await mkdtemp(join(tmpdir(), "attention-sinks-cli-perplexity-"));
  const text = SENTENCES.repeat(repeat);
  const data = join(dir, "text.txt");
  await writeFile(data, text);
  return { f, text, data, out: join(dir, "outputs") };
}

function baseArgs(f: Fixture, data: string, out: string, experiment: Experiment, numTokens = TOKENS): string[] {
  return [
    "--experiment", experiment,
    "--model_name_or_path", f.dir,
    "--dataset_name", data,
    "--output_dir", out,
    "--num_tokens", String(numTokens),
    "--window_size", String(WINDOW),
    "--attention_sink_size", String(SINKS),
  ];
}

const POLICIES: Record<Experiment, ReferencePolicy> = {
  attention_sinks: { sink_size: SINKS, window_size: WINDOW - SINKS },
  windowed: { sink_size: 0, window_size: WINDOW },
  transformers: { sink_size: 0, window_size: null },
};

describe("attention-sinks perplexity", () => {
  it("writes each experiment's CSV, whose NLLs equal the StreamingLLM oracle's", async () => {
    const { f, text, data, out } = await setup();
    const tokenizer = await AutoTokenizer.from_pretrained(f.dir, { local_files_only: true });
    const ids = tokenizer.encode(text);
    assert.equal(ids[0], 1, "the sample starts with BOS");
    const perToken = f.spec.num_layers * 2 * f.spec.num_kv_heads * f.spec.head_dim * 4;

    await Promise.all(
      (Object.keys(POLICIES) as Experiment[]).map(async (experiment) => {
        const run = await cli(baseArgs(f, data, out, experiment));
        assert.equal(run.code, 0, run.stderr);
        assert.match(run.stdout, new RegExp(`^${experiment}: ${TOKENS} tokens, overall perplexity [\\d.]+, [\\d.]+ tokens/s; wrote .*${experiment}\\.csv`));
        assert.match(run.stderr, new RegExp(`${experiment} \\[=+\\] ${TOKENS}/${TOKENS} 100% [\\d.]+ tok/s  ppl [\\d.]+  kv \\d`), "the progress bar");

        const csv = await readFile(join(out, `${experiment}.csv`), "utf8");
        assert.equal(csv.split("\n")[0], CSV_COLUMNS.join(","));
        const columns = parseBenchmarkCsv(csv, `${experiment}.csv`);
        assert.deepEqual(columns.input_length, Array.from({ length: TOKENS }, (_, i) => i + 1));

        const oracle = new StreamingReference(f.spec, f.weights, POLICIES[experiment]);
        let sum = 0;
        for (let i = 0; i < TOKENS; i++) {
          const expected = referenceNll(oracle.forward([ids[i]])[0], ids[i + 1]);
          assert.ok(Math.abs(columns.nll[i] - expected) < TOLERANCE, `${experiment}, token ${i}: ${columns.nll[i]} vs ${expected}`);
          sum += columns.nll[i];
          assert.ok(Math.abs(columns.ppl[i] - Math.exp(columns.nll[i])) <= 1e-9 * columns.ppl[i]);
          assert.ok(Math.abs(columns.overall_ppl[i] - Math.exp(sum / (i + 1))) <= 1e-9 * columns.overall_ppl[i]);
          const cached = experiment === "transformers" ? i + 1 : Math.min(i + 1, WINDOW);
          assert.equal(columns.kv_cache_bytes[i], cached * perToken);
          assert.ok(columns.rss_bytes[i] > 0 && columns.latency[i] > 0);
        }
      }),
    );
  });

  it("never overwrites a CSV without --overwrite", async () => {
    const { f, data, out } = await setup();
    const first = await cli(baseArgs(f, data, out, "windowed", 12));
    assert.equal(first.code, 0, first.stderr);
    const csv = join(out, "windowed.csv");
    const before = await readFile(csv, "utf8");

    const refused = await cli(baseArgs(f, data, out, "windowed", 5));
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /windowed\.csv already exists; pass --overwrite to replace it/);
    assert.equal(await readFile(csv, "utf8"), before);

    const replaced = await cli([...baseArgs(f, data, out, "windowed", 5), "--overwrite"]);
    assert.equal(replaced.code, 0, replaced.stderr);
    assert.equal(parseBenchmarkCsv(await readFile(csv, "utf8"), csv).nll.length, 5);
  });

  it("leaves a valid CSV of the tokens done when SIGINT or SIGTERM stops it", async () => {
    const { f, data, out } = await setup(400);
    const stopAfterRows = (experiment: Experiment, signal: NodeJS.Signals) => async (child: ChildProcess) => {
      const csv = join(out, `${experiment}.csv`);
      while (child.exitCode === null) {
        await new Promise((wait) => setTimeout(wait, 50));
        if (existsSync(csv) && (await readFile(csv, "utf8")).split("\n").length > 31) {
          child.kill(signal);
          return;
        }
      }
    };
    const runs = await Promise.all(
      (["attention_sinks", "transformers"] as const).map((experiment, i) => {
        const signal = (["SIGINT", "SIGTERM"] as const)[i];
        return cli(baseArgs(f, data, out, experiment, 100_000), { whileRunning: stopAfterRows(experiment, signal) }).then((run) => ({ experiment, signal, run }));
      }),
    );
    for (const { experiment, signal, run } of runs) {
      assert.equal(run.code, signal === "SIGINT" ? 130 : 143, run.stderr);
      assert.match(run.stderr, new RegExp(`${signal}: stopping after the current token`));
      const csv = await readFile(join(out, `${experiment}.csv`), "utf8");
      assert.ok(csv.endsWith("\n"), "the last row is whole");
      const columns = parseBenchmarkCsv(csv, experiment);
      assert.ok(columns.nll.length >= 30 && columns.nll.length < 100_000, `${columns.nll.length} rows`);
      assert.deepEqual(columns.input_length, Array.from({ length: columns.nll.length }, (_, i) => i + 1));
      assert.match(run.stdout, new RegExp(`^${experiment}: ${columns.nll.length} tokens`));
    }
  });

  it("rejects bad flags with exit code 2 and a message naming the flag", async () => {
    const { f, data, out } = await setup();
    const cases: [string[], RegExp][] = [
      [[...baseArgs(f, data, out, "windowed"), "--experiment", "nope"], /--experiment must be one of attention_sinks, transformers, windowed; got "nope"/],
      [[...baseArgs(f, data, out, "windowed"), "--num_tokens", "0"], /--num_tokens must be at least 1, got 0/],
      [[...baseArgs(f, data, out, "windowed"), "--window_size", "many"], /--window_size must be an integer, got "many"/],
      [[...baseArgs(f, data, out, "windowed"), "--bogus"], /unknown option '--bogus'/i],
      [["--dataset_name", data, "--output_dir", out], /--model_name_or_path is required/],
      [[...baseArgs(f, data, out, "attention_sinks"), "--window_size", "2"], /--window_size 2 with --attention_sink_size 2: window_size \(2\) must be larger than attention_sink_size \(2\)/],
      [[...baseArgs(f, data, out, "windowed"), "--window_size", "1024"], /--window_size 1024 exceeds the 64 positions this model addresses \(max_position_embeddings\); use --window_size <= 64/],
    ];
    const runs = await Promise.all(cases.map(([args]) => cli(args)));
    for (const [i, run] of runs.entries()) {
      assert.equal(run.code, 2, `case ${i}: ${run.stderr}`);
      assert.match(run.stderr, cases[i][1]);
      assert.match(run.stderr, /usage: attention-sinks perplexity/);
    }
    assert.equal(existsSync(out), false, "no output for a refused run");
  });

  it("says clearly that a Hub dataset cannot be loaded offline", async () => {
    const { f, out } = await setup();
    // A port nothing listens on stands for the unreachable Hub.
    const server = createServer();
    await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
    const { port } = server.address() as { port: number };
    await new Promise((done) => server.close(done));
    const run = await cli(["--model_name_or_path", f.dir, "--output_dir", out, "--window_size", "8"], { env: { HF_ENDPOINT: `http://127.0.0.1:${port}` } });
    assert.equal(run.code, 1);
    assert.match(run.stderr, /cannot load the Hub dataset "emozilla\/pg19-test": the Hugging Face Hub cannot be reached .*local \.txt, \.jsonl, \.json or \.parquet file or folder/);
    assert.equal(existsSync(join(out, "attention_sinks.csv")), false);
  });
});

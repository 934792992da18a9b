/**
 * The perplexity benchmark's library: the token-by-token evaluation of each experiment against the literal
 * StreamingLLM oracle, the stream and stop semantics, the CSV files, the datasets and the summary.
 */
import { compareStepTime } from "../bench/perplexity_overhead.js";
import { summaryTable } from "../src/cli/format.js";
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { mkdtemp, mkdir, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parquetWriteBuffer } from "hyparquet-writer";
import {
  CSV_COLUMNS,
  CsvLogWriter,
  DatasetError,
  OutputExistsError,
  encodeSample,
  evaluatePerplexity,
  loadTextSamples,
  parseBenchmarkCsv,
  runPerplexity,
  summarizeExperiments,
  tokenNll,
  type Experiment,
  type TokenRecord,
  type TokenStream,
} from "../src/perplexity/index.js";
import { AutoTokenizer, env } from "../src/index.js";
import * as transformers from "@huggingface/transformers";
import { loadTransformersBackend, SinkStream, TransformersTokenizer } from "../src/transformers/backend.js";
import { StreamingReference, referenceNll } from "./support/reference/streaming_reference.js";
import { writeTinyTokenizer } from "./support/fixtures/tiny_tokenizer.js";
import type { TinyVariant } from "./support/fixtures/tiny_models.js";
import { experimentPolicies, fixture, tokenStream } from "./support/streaming.js";

const TOLERANCE = 1e-4;
const SINKS = 2;
const WINDOW = 8;

const POLICIES = experimentPolicies(SINKS, WINDOW);

async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), "attention-sinks-benchmark-"));
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

describe("evaluatePerplexity equals the StreamingLLM oracle token by token", () => {
  const variants: TinyVariant[] = ["llama", "bloom"];
  for (const variant of variants) {
    for (const experiment of Object.keys(POLICIES) as Experiment[]) {
      it(`${variant}, ${experiment}: NLL, perplexities and KV bytes of every token`, async () => {
        const f = await fixture(variant);
        await writeTinyTokenizer(f.dir);
        const tokens = tokenStream(4 * WINDOW + 5, f.spec.vocab_size, 11);
        const stepper = await loadTransformersBackend(f.dir, { experiment, window_size: WINDOW, attention_sink_size: SINKS });
        const records: TokenRecord[] = [];
        const result = await evaluatePerplexity(stepper, [tokens], { num_tokens: 1000, onToken: (r) => records.push(r) });

        const oracle = new StreamingReference(f.spec, f.weights, POLICIES[experiment]);
        assert.equal(records.length, tokens.length - 1);
        let sum = 0;
        for (const [i, record] of records.entries()) {
          const expected = referenceNll(oracle.forward([tokens[i]])[0], tokens[i + 1]);
          assert.ok(Math.abs(record.nll - expected) < TOLERANCE, `token ${i}: ${record.nll} vs ${expected}`);
          sum += record.nll;
          assert.equal(record.input_length, i + 1);
          assert.ok(Math.abs(record.ppl - Math.exp(record.nll)) <= 1e-9 * record.ppl);
          assert.ok(Math.abs(record.overall_ppl - Math.exp(sum / (i + 1))) <= 1e-9 * record.overall_ppl);
          assert.ok(record.latency > 0 && record.rss_bytes > 0);
        }
        assert.equal(result.tokens, records.length);
        assert.equal(result.overall_ppl, records.at(-1)!.overall_ppl);

        // Keys and values of one token: layers x (key + value) x kv heads x head_dim floats.
        const perToken = f.spec.num_layers * 2 * f.spec.num_kv_heads * f.spec.head_dim * 4;
        for (const record of records) {
          const cached = experiment === "transformers" ? record.input_length : Math.min(record.input_length, WINDOW);
          assert.equal(record.kv_cache_bytes, cached * perToken, `kv bytes at ${record.input_length}`);
        }
      });
    }
  }
});

/** Logits that give the fed token's id the highest score, and records what was fed. */
class FakeStepper implements TokenStream {
  readonly fed: number[] = [];
  async feed(tokens: readonly number[]): Promise<Float32Array> {
    this.fed.push(...tokens);
    const logits = new Float32Array(16);
    logits[tokens[0]] = 3;
    return logits;
  }
  stats() {
    const tokens = this.fed.length;
    return { seen_tokens: tokens, cached_tokens: tokens, kv_cache_bytes: tokens, kv_buffer_bytes: tokens };
  }
}

describe("evaluatePerplexity streams samples as the seed does", () => {
  it("continues one stream over samples, never feeding a sample's last token", async () => {
    const stepper = new FakeStepper();
    const records: TokenRecord[] = [];
    const result = await evaluatePerplexity(stepper, [[1, 2, 3], [4], [5, 6]], { num_tokens: 100, onToken: (r) => records.push(r) });
    assert.deepEqual(stepper.fed, [1, 2, 5]);
    assert.deepEqual(records.map((r) => r.input_length), [1, 2, 3]);
    assert.deepEqual(records.map((r) => r.kv_cache_bytes), [1, 2, 3]);
    assert.equal(result.tokens, 3);
    assert.equal(result.interrupted, false);
  });

  it("stops at num_tokens, and after the token in flight when the signal aborts", async () => {
    const capped = await evaluatePerplexity(new FakeStepper(), [[1, 2, 3, 4, 5, 6]], { num_tokens: 2 });
    assert.equal(capped.tokens, 2);
    assert.equal(capped.interrupted, false);

    const controller = new AbortController();
    const stopped = await evaluatePerplexity(new FakeStepper(), [[1, 2, 3, 4, 5, 6]], {
      num_tokens: 100,
      signal: controller.signal,
      onToken: (r) => r.input_length === 3 && controller.abort(),
    });
    assert.equal(stopped.tokens, 3);
    assert.equal(stopped.interrupted, true);
  });

  it("refuses a target outside the model's vocabulary", async () => {
    await assert.rejects(evaluatePerplexity(new FakeStepper(), [[1, 99]], { num_tokens: 5 }), /outside the model's vocabulary of 16/);
  });

  it("tokenNll is the log-softmax loss, also for large logits", () => {
    const logits = Float32Array.from({ length: 50 }, (_, i) => Math.sin(i) * 40 + 500);
    for (const target of [0, 7, 49]) assert.ok(Math.abs(tokenNll(logits, target) - referenceNll(logits, target)) < 1e-9);
  });
});

describe("runPerplexity", () => {
  it("streams the first num_samples samples of a dataset into one CSV, reading no further sample", async () => {
    const f = await fixture("llama");
    await writeTinyTokenizer(f.dir);
    const dir = await tempDir();
    // The malformed line comes straight after the last sample that may be read: reading one more fails.
    const rows = ["the cat sat.", "she was happy!"].map((text) => JSON.stringify({ text })).join("\n");
    await writeFile(join(dir, "rows.jsonl"), rows + "\n{ not json\n" + JSON.stringify({ text: "what a day" }) + "\n");
    const tokenizer = await AutoTokenizer.from_pretrained(f.dir, { local_files_only: true });
    const lengths = ["the cat sat.", "she was happy!"].map((text) => encodeSample(new TransformersTokenizer(tokenizer), text).length);
    const seen: number[] = [];
    const result = await runPerplexity(
      {
        experiment: "attention_sinks",
        model_name_or_path: f.dir,
        window_size: WINDOW,
        attention_sink_size: SINKS,
        dataset_name: join(dir, "rows.jsonl"),
        num_samples: 2,
        output_dir: join(dir, "out"),
      },
      { onToken: (record) => seen.push(record.input_length) },
    );
    const expected = lengths[0] - 1 + lengths[1] - 1;
    assert.equal(result.tokens, expected);
    assert.deepEqual(seen, Array.from({ length: expected }, (_, i) => i + 1));
    const columns = parseBenchmarkCsv(await readFile(result.csv, "utf8"), result.csv);
    assert.deepEqual(columns.input_length, seen);
    assert.equal(result.csv, join(dir, "out", "attention_sinks.csv"));
  });
});

describe("CSV files", () => {
  const record = (i: number): TokenRecord => ({
    input_length: i,
    nll: 1 / 3,
    ppl: Math.exp(1 / 3),
    overall_ppl: 1.5,
    kv_cache_bytes: 64 * i,
    rss_bytes: 1e8,
    latency: 0.001,
  });

  it("writes whole rows every 10 tokens, exact numbers, and never replaces a file without overwrite", async () => {
    const path = join(await tempDir(), "run.csv");
    const writer = new CsvLogWriter(path, { overwrite: false });
    for (let i = 1; i <= 9; i++) writer.append(record(i));
    assert.equal(await readFile(path, "utf8"), CSV_COLUMNS.join(",") + "\n", "rows are buffered up to 10");
    writer.append(record(10));
    assert.equal(parseBenchmarkCsv(await readFile(path, "utf8"), path).nll.length, 10);
    writer.append(record(11));
    writer.close();
    const columns = parseBenchmarkCsv(await readFile(path, "utf8"), path);
    assert.deepEqual(Object.keys(columns), [...CSV_COLUMNS]);
    assert.deepEqual(columns.input_length, Array.from({ length: 11 }, (_, i) => i + 1));
    assert.equal(columns.nll[0], 1 / 3, "numbers round-trip exactly");

    assert.throws(() => new CsvLogWriter(path, { overwrite: false }), OutputExistsError);
    assert.equal(parseBenchmarkCsv(await readFile(path, "utf8"), path).nll.length, 11, "the refused file is untouched");
    new CsvLogWriter(path, { overwrite: true }).close();
    assert.equal(parseBenchmarkCsv(await readFile(path, "utf8"), path).nll.length, 0);
  });

  it("drops a last line cut short, and rejects malformed rows elsewhere", () => {
    const header = "input_length,nll\n";
    assert.deepEqual(parseBenchmarkCsv(`${header}1,2.5\n2,3`, "a.csv").nll, [2.5, 3], "a whole last row without its newline");
    assert.deepEqual(parseBenchmarkCsv(`${header}1,2.5\n2,`, "a.csv").nll, [2.5]);
    assert.deepEqual(parseBenchmarkCsv(`${header}1,2.5\n2`, "a.csv").nll, [2.5]);
    assert.deepEqual(parseBenchmarkCsv(`${header}1,NaN\n`, "a.csv").nll, [NaN]);
    assert.throws(() => parseBenchmarkCsv(`${header}1,x\n2,3\n`, "a.csv"), /a\.csv, line 2/);
    assert.throws(() => parseBenchmarkCsv(`${header}1,\n`, "a.csv"), /a\.csv, line 2/);
  });

  it("summarizes runs: tokens, perplexity, speed and whether the cache stayed bounded", () => {
    const table = (experiment: string, growing: boolean) => ({
      experiment,
      columns: {
        nll: [1, 2, 3, 2, 1, 2, 3, 2],
        latency: Array(8).fill(0.25),
        kv_cache_bytes: growing ? [1, 2, 3, 4, 5, 6, 7, 8] : [1, 2, 3, 3, 3, 3, 3, 3],
      },
    });
    const [bounded, growing] = summarizeExperiments([table("attention_sinks", false), table("transformers", true)]);
    assert.equal(bounded.tokens, 8);
    assert.ok(Math.abs(bounded.overall_ppl - Math.exp(2)) < 1e-12);
    assert.equal(bounded.tokens_per_second, 4);
    assert.equal(bounded.bounded, true);
    assert.equal(growing.bounded, false);
    assert.equal(growing.max_kv_cache_bytes, 8);
    const markdown = summaryTable([bounded, growing]);
    assert.match(markdown, /\| attention_sinks \| 8 \| 7\.39 \| 4\.0 \| 3 B \| yes \|/);
    assert.match(markdown, /\| transformers \| 8 \| 7\.39 \| 4\.0 \| 8 B \| no \|/);
  });
});

describe("datasets", () => {
  it("reads .txt as one sample, .jsonl and .json rows by column, and parquet lazily by column", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, "book.txt"), "one whole\n\nbook");
    await writeFile(join(dir, "rows.jsonl"), '{"text": "a", "id": 1}\n\n{"text": "b", "id": 2}\n');
    await writeFile(join(dir, "rows.json"), JSON.stringify([{ story: "c" }, { story: "d" }]));
    await writeFile(join(dir, "lines.json"), '{"text": "e"}\n{"text": "f"}\n');
    const texts = Array.from({ length: 20 }, (_, i) => `parquet row ${i}`);
    await writeFile(join(dir, "rows.parquet"), new Uint8Array(parquetWriteBuffer({ columnData: [{ name: "content", data: texts, type: "STRING" }] })));

    assert.deepEqual(await collect(loadTextSamples({ dataset_name: join(dir, "book.txt") })), ["one whole\n\nbook"]);
    assert.deepEqual(await collect(loadTextSamples({ dataset_name: join(dir, "rows.jsonl") })), ["a", "b"]);
    assert.deepEqual(await collect(loadTextSamples({ dataset_name: join(dir, "rows.json"), data_column: "story" })), ["c", "d"]);
    assert.deepEqual(await collect(loadTextSamples({ dataset_name: join(dir, "lines.json") })), ["e", "f"]);
    assert.deepEqual(await collect(loadTextSamples({ dataset_name: join(dir, "rows.parquet"), data_column: "content" })), texts);
    await assert.rejects(collect(loadTextSamples({ dataset_name: join(dir, "rows.jsonl"), data_column: "body" })), /has no column "body" \(its columns: text, id\); choose one with --data_column/);
    await assert.rejects(collect(loadTextSamples({ dataset_name: join(dir, "rows.parquet") })), /has no column "text" \(its columns: content\)/);
    await writeFile(join(dir, "bad.jsonl"), '{"text": "a"}\n{"text": \n');
    await assert.rejects(collect(loadTextSamples({ dataset_name: join(dir, "bad.jsonl") })), /bad\.jsonl, line 2: not valid JSON/);
  });

  it("reads a folder's files of the split (or all), in its task subfolder when there is one", async () => {
    const dir = await tempDir();
    await mkdir(join(dir, "data"));
    await writeFile(join(dir, "data", "test-00000-of-00002.jsonl"), '{"text": "t0"}\n');
    await writeFile(join(dir, "data", "test-00001-of-00002.jsonl"), '{"text": "t1"}\n');
    await writeFile(join(dir, "data", "train.jsonl"), '{"text": "train"}\n');
    await mkdir(join(dir, "books"));
    await writeFile(join(dir, "books", "b.txt"), "book b");
    await writeFile(join(dir, "books", "a.txt"), "book a");
    assert.deepEqual(await collect(loadTextSamples({ dataset_name: dir })), ["t0", "t1"]);
    assert.deepEqual(await collect(loadTextSamples({ dataset_name: dir, split: "train" })), ["train"]);
    assert.deepEqual(await collect(loadTextSamples({ dataset_name: dir, task: "books" })), ["book a", "book b"]);
  });

  it("names what is missing: a local path, or the Hub when offline or unreachable", async () => {
    await assert.rejects(collect(loadTextSamples({ dataset_name: "./no/such/file.txt" })), (e: unknown) => e instanceof DatasetError && /does not exist/.test((e as Error).message));

    const saved = { offline: process.env.HF_HUB_OFFLINE, endpoint: process.env.HF_ENDPOINT, remote: env.allowRemoteModels };
    try {
      process.env.HF_HUB_OFFLINE = "1";
      await assert.rejects(collect(loadTextSamples({ dataset_name: "emozilla/pg19-test" })), /cannot load the Hub dataset "emozilla\/pg19-test": .*HF_HUB_OFFLINE is set.*local \.txt/);
      delete process.env.HF_HUB_OFFLINE;
      env.allowRemoteModels = false;
      await assert.rejects(collect(loadTextSamples({ dataset_name: "emozilla/pg19-test" })), /env\.allowRemoteModels is false/);
      env.allowRemoteModels = true;
      // A port nothing listens on: the Hub "cannot be reached".
      const server = createServer();
      await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
      const { port } = server.address() as { port: number };
      await new Promise((done) => server.close(done));
      process.env.HF_ENDPOINT = `http://127.0.0.1:${port}`;
      await assert.rejects(collect(loadTextSamples({ dataset_name: "emozilla/pg19-test" })), /the Hugging Face Hub cannot be reached/);
    } finally {
      env.allowRemoteModels = saved.remote;
      for (const [name, value] of [["HF_HUB_OFFLINE", saved.offline], ["HF_ENDPOINT", saved.endpoint]] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });

  it("encodes a sample with the BOS its tokenizer adds or its config asks for", async () => {
    const f = await fixture("llama");
    await writeTinyTokenizer(f.dir);
    const tokenizer = await AutoTokenizer.from_pretrained(f.dir, { local_files_only: true });
    const ids = encodeSample(new TransformersTokenizer(tokenizer), "the cat");
    assert.equal(ids[0], 1);
    assert.equal(ids.filter((id) => id === 1).length, 1, "the post-processor's BOS is not added twice");
    // A tokenizer without a post-processor, whose config asks for a BOS.
    const bare = Object.assign(Object.create(tokenizer) as typeof tokenizer, { encode: (text: string) => tokenizer.encode(text).slice(1) });
    assert.deepEqual(encodeSample(new TransformersTokenizer(bare), "the cat"), ids);
  });
});

describe("compareStepTime", () => {
  /** The middle value (the mean of the two middle ones for an even count), restated here. */
  const middle = (values: readonly number[]) => {
    const sorted = [...values].sort((a, b) => a - b);
    const half = sorted.length >> 1;
    return sorted.length % 2 ? sorted[half] : (sorted[half - 1] + sorted[half]) / 2;
  };

  it("times the attention_sinks experiment's steps against bare forward passes at the same cache length", async () => {
    const f = await fixture("llama");
    await writeTinyTokenizer(f.dir);
    const [steps, rounds] = [4, 2];
    const tokens = tokenStream(64, f.spec.vocab_size, 3);

    // Watch what the benchmark runs: every sink-cache step (its token, its duration, the cache after it), and
    // every onnxruntime run (how many tokens its attention mask lets it see), the bare ones being the runs
    // made outside a sink step. All sessions share one class, so its prototype sees them all.
    const probe = await transformers.AutoModelForCausalLM.from_pretrained(f.dir, { local_files_only: true });
    const sessionClass = Object.getPrototypeOf((probe.sessions as Record<string, object>).model) as { run: (...args: unknown[]) => Promise<unknown> };
    const originalRun = sessionClass.run;
    const originalFeed = SinkStream.prototype.feed;
    type Run = { sink: boolean; input_tokens: number; attended: number; ms: number; end: number };
    const runs: Run[] = [];
    const sinkSteps: { tokens: number[]; ms: number; stats: ReturnType<SinkStream["stats"]> }[] = [];
    let inSinkStep = false;
    sessionClass.run = async function (this: unknown, ...args: unknown[]) {
      const feeds = args[0] as Record<string, { dims: readonly number[]; data: BigInt64Array }>;
      const mask = feeds.attention_mask;
      const record: Run = {
        sink: inSinkStep,
        input_tokens: feeds.input_ids.dims[1],
        attended: mask ? Array.from(mask.data, Number).reduce((sum, m) => sum + m, 0) : -1,
        ms: 0,
        end: 0,
      };
      const start = performance.now();
      try {
        return await originalRun.apply(this, args);
      } finally {
        record.end = performance.now();
        record.ms = record.end - start;
        runs.push(record);
      }
    };
    SinkStream.prototype.feed = async function (this: SinkStream, fed: readonly number[]) {
      inSinkStep = true;
      const start = performance.now();
      try {
        return await originalFeed.call(this, fed);
      } finally {
        sinkSteps.push({ tokens: [...fed], ms: performance.now() - start, stats: this.stats() });
        inSinkStep = false;
      }
    };
    let result: Awaited<ReturnType<typeof compareStepTime>>;
    try {
      result = await compareStepTime({ model_name_or_path: f.dir, window_size: WINDOW, attention_sink_size: SINKS, tokens, steps, rounds });
    } finally {
      sessionClass.run = originalRun;
      SinkStream.prototype.feed = originalFeed;
    }
    const returned = performance.now();
    await probe.dispose();

    assert.equal(result.cache_tokens, WINDOW);
    for (const value of [result.sink_ms, result.bare_ms, result.ratio]) assert.ok(Number.isFinite(value) && value > 0, `${value}`);

    // The sink side streams one token at a time, in order: the fill, the first compactions and a warm-up
    // (2 * window + steps), then `steps` per round; once full the cache attends to exactly the window.
    const fills = 2 * WINDOW + steps;
    assert.equal(sinkSteps.length, fills + rounds * steps);
    sinkSteps.forEach((step, i) => {
      assert.deepEqual(step.tokens, [tokens[i % tokens.length]], `sink step ${i}`);
      assert.equal(step.stats.seen_tokens, i + 1, `sink step ${i}`);
      assert.equal(step.stats.cached_tokens, Math.min(i + 1, WINDOW), `sink step ${i}`);
    });
    const sinkRuns = runs.filter((run) => run.sink);
    assert.equal(sinkRuns.length, sinkSteps.length, "one forward pass per sink step");
    for (const run of sinkRuns.slice(fills)) assert.deepEqual([run.input_tokens, run.attended], [1, WINDOW], "a timed sink step attends to the full window");

    // The bare side: a prefill of window - 1 tokens, then one-token passes that attend to window tokens
    // (a warm-up of `steps`, then `steps` per round).
    const bareRuns = runs.filter((run) => !run.sink);
    assert.equal(bareRuns.length, 1 + steps + rounds * steps);
    assert.deepEqual([bareRuns[0].input_tokens, bareRuns[0].attended], [WINDOW - 1, WINDOW - 1]);
    for (const run of bareRuns.slice(1)) assert.deepEqual([run.input_tokens, run.attended], [1, WINDOW], "a bare pass attends to the window");

    // The times are per token and come from the timed rounds: each round's clock encloses its steps' own
    // durations (so the median per token is at least theirs), and at least half the rounds of both sides,
    // at their medians, fit between the last warm-up pass and the return.
    const perRound = (durations: number[]) => Array.from({ length: rounds }, (_, r) => durations.slice(r * steps, (r + 1) * steps).reduce((a, b) => a + b, 0) / steps);
    const timedSink = sinkSteps.slice(fills).map((step) => step.ms);
    const timedBare = bareRuns.slice(1 + steps).map((run) => run.ms);
    assert.ok(result.sink_ms >= middle(perRound(timedSink)) - 1e-9, `sink_ms ${result.sink_ms} < the steps' own ${middle(perRound(timedSink))}`);
    assert.ok(result.bare_ms >= middle(perRound(timedBare)) - 1e-9, `bare_ms ${result.bare_ms} < the passes' own ${middle(perRound(timedBare))}`);
    const timedSpan = returned - bareRuns[steps].end;
    const floor = steps * Math.ceil(rounds / 2) * (result.sink_ms + result.bare_ms);
    assert.ok(floor <= timedSpan, `${floor} ms of timed steps in the ${timedSpan} ms the rounds took`);
  });
});

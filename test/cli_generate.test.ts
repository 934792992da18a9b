/**
 * `attention-sinks generate` driven as a user would: a child process with real stdin, stdout and signals,
 * on a tiny fixture and on the real TinyStories-656K model (../shared).
 */
import { before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UsageError } from "../src/cli/args.js";
import { generateCommand } from "../src/cli/commands/generate.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";
import { jsonLines, runCli as cli } from "./support/cli.js";
import { loadTransformersBackend } from "../src/transformers/backend.js";
import { StreamingReference, referenceNll } from "./support/reference/streaming_reference.js";
import { sharedFiles, sharedReference } from "./support/shared_data.js";
import { readSafetensorsLlamaWeights } from "./support/shared_weights.js";

let fixture = "";
let scratch = "";
before(async () => {
  scratch = await mkdtemp(join(tmpdir(), "attention-sinks-cli-generate-"));
  fixture = join(scratch, "tiny-llama");
  await writeTinyTextModel(fixture, "llama", { seed: 7 });
});

describe("generate: help and usage errors", () => {
  it("--help lists the commands, and `generate --help` every option", async () => {
    const overview = await cli(["--help"]);
    assert.equal(overview.code, 0);
    assert.match(overview.stdout, /^\s+generate\s+\S/m);
    assert.match(overview.stdout, /^\s+chat\s+\S/m);
    const help = await cli(["generate", "--help"]);
    assert.equal(help.code, 0);
    for (const flag of [
      "model_name_or_path",
      "prompt",
      "max_new_tokens",
      "min_new_tokens",
      "attention_sink_size",
      "attention_sink_window_size",
      "experiment {attention_sinks,transformers,windowed}",
      "do_sample",
      "temperature",
      "top_k",
      "top_p",
      "repetition_penalty",
      "seed",
      "dtype",
      "device",
      "output",
      "stats_json",
    ]) {
      assert.ok(help.stdout.includes(`--${flag}`), `--${flag} in generate --help`);
    }
  });

  it("wrong flags and values get a message and exit code 2; a missing model exit code 1", async () => {
    const model = ["--model_name_or_path", fixture, "--prompt", "hi"];
    const [unknown, misused, missing] = await Promise.all([
      cli(["generate", ...model, "--max_tokens", "5"]),
      cli(["generate", ...model, "--temperature", "0.7"]),
      cli(["generate", "--model_name_or_path", join(scratch, "no-such-model"), "--prompt", "hi"]),
    ]);
    for (const run of [unknown, misused]) {
      assert.equal(run.code, 2, run.stderr);
      assert.match(run.stderr, /usage: attention-sinks generate \[options\]\nRun `attention-sinks generate --help` for details/);
      assert.equal(run.stdout, "");
    }
    assert.match(unknown.stderr, /^attention-sinks generate: unknown option '--max_tokens'; did you mean --max_new_tokens\?$/m);
    assert.match(misused.stderr, /^attention-sinks generate: --temperature only applies to sampling: add --do_sample$/m);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no-such-model: not found locally \(no file or folder of that name\)/);
  });

  it("every value the command cannot use is a usage error that names the flag", async () => {
    const model = ["--model_name_or_path", fixture, "--prompt", "hi"];
    const cases: [string[], RegExp][] = [
      [["--prompt", "hi"], /--model_name_or_path is required/],
      [[...model, "--experiment", "dense"], /--experiment must be one of attention_sinks, transformers, windowed; got "dense"/],
      [[...model, "--max_new_tokens", "lots"], /--max_new_tokens must be an integer, got "lots"/],
      [[...model, "--do_sample", "--top_p", "1.5"], /--top_p must be in \(0, 1\], got 1.5/],
      [[...model, "--do_sample", "--temperature", "0"], /--temperature must be greater than 0/],
      [[...model, "--repetition_penalty", "0"], /--repetition_penalty must be greater than 0/],
      [[...model, "--max_new_tokens", "5", "--min_new_tokens", "6"], /--min_new_tokens \(6\) exceeds --max_new_tokens \(5\)/],
      // The fixture addresses 64 positions.
      [[...model, "--attention_sink_window_size", "100"], /exceeds the 64 positions .* use --attention_sink_window_size <= 60/],
    ];
    for (const [args, message] of cases) {
      await assert.rejects(
        generateCommand.execute(args),
        (error: Error) => error instanceof UsageError && message.test(error.message),
        args.join(" "),
      );
    }
  });
});

describe("generate on a tiny model", () => {
  it("reads the prompt from stdin; stdout is the prompt then the continuation, also written to --output", async () => {
    const output = join(scratch, "stdin.txt");
    const stats = join(scratch, "stdin.jsonl");
    const run = await cli(["generate", "--model_name_or_path", fixture, "--max_new_tokens", "30", "--output", output, "--stats_json", stats, "--stats_every", "10"], {
      input: "once upon a time\n",
    });
    assert.equal(run.code, 0, run.stderr);
    assert.ok(run.stdout.startsWith("once upon a time") && run.stdout.length > "once upon a time\n".length, run.stdout);
    assert.ok(run.stdout.endsWith("\n"));
    assert.equal(await readFile(output, "utf8"), run.stdout);
    assert.match(run.stderr, /llama model, attention_sinks: 4 sink \+ 56 window tokens; greedy decoding/);
    assert.match(run.stderr, /^30 tokens in [\d.]+ s \([\d,.]+ tokens\/s\); stopped: max_new_tokens$/m);
    const records = jsonLines(await readFile(stats, "utf8"));
    assert.deepEqual(
      records.map((r) => [r.event, r.tokens]),
      [["progress", 10], ["progress", 20], ["progress", 30], ["summary", 30]],
    );
    const summary = records[3];
    // "once upon a time" is 14 tokens with BOS; the last token generated is never fed.
    assert.deepEqual([summary.prompt_tokens, summary.seen_tokens, summary.stopped], [14, 43, "max_new_tokens"]);
  });

  it("greedy text is the same in all three experiments while nothing is evicted (plain transformers.js included)", async () => {
    const runs = await Promise.all(
      ["attention_sinks", "windowed", "transformers"].map((experiment) =>
        cli(["generate", "--model_name_or_path", fixture, "--prompt", "the cat", "--max_new_tokens", "40", "--experiment", experiment]),
      ),
    );
    for (const run of runs) assert.equal(run.code, 0, run.stderr);
    assert.ok(runs[0].stdout.startsWith("the cat") && runs[0].stdout.trimEnd().length > "the cat".length, `a continuation: ${JSON.stringify(runs[0].stdout)}`);
    assert.match(runs[0].stderr, /^40 tokens in .*; stopped: max_new_tokens$/m);
    assert.equal(runs[1].stdout, runs[0].stdout);
    assert.equal(runs[2].stdout, runs[0].stdout);
    assert.match(runs[1].stderr, /windowed: 0 sink \+ 60 window tokens/);
    assert.match(runs[2].stderr, /transformers: a dense cache that grows with every token/);
  });

  it("--seed makes sampling reproducible", async () => {
    const sample = (seed: string) =>
      cli(["generate", "--model_name_or_path", fixture, "--prompt", "the", "--max_new_tokens", "40", "--do_sample", "--temperature", "1.5", "--top_p", "0.95", "--seed", seed]);
    const [a, b, c] = await Promise.all([sample("5"), sample("5"), sample("6")]);
    for (const run of [a, b, c]) assert.equal(run.code, 0, run.stderr);
    assert.equal(a.stdout, b.stdout);
    assert.notEqual(a.stdout, c.stdout);
    assert.match(a.stderr, /sampling \(temperature 1.5, top_k 50, top_p 0.95\)/);
  });

  it("Ctrl-C (or SIGTERM) stops cleanly: the text so far is flushed and the summary printed", async () => {
    const args = ["--model_name_or_path", fixture, "--prompt", "the", "--max_new_tokens", "100000", "--min_new_tokens", "100000"];
    const files = (name: string) => ["--output", join(scratch, `${name}.txt`), "--stats_json", join(scratch, `${name}.jsonl`)];
    const [run, terminated] = await Promise.all([
      cli(["generate", ...args, ...files("sigint")], { interrupt: 200 }),
      cli(["generate", ...args, ...files("sigterm")], { interrupt: 200, signal: "SIGTERM" }),
    ]);
    assert.equal(run.code, 130, run.stderr);
    assert.equal(terminated.code, 143, terminated.stderr);
    assert.match(run.stderr, /stopped: interrupted/);
    assert.match(run.stderr, /^cache: 60 of [\d,]+ tokens attended; KV 15.0 KiB/m);
    assert.ok(run.stdout.length >= 200 && run.stdout.endsWith("\n"));
    assert.equal(await readFile(join(scratch, "sigint.txt"), "utf8"), run.stdout);
    const summary = jsonLines(await readFile(join(scratch, "sigint.jsonl"), "utf8")).at(-1)!;
    assert.equal(summary.stopped, "interrupted");
    assert.ok((summary.tokens as number) < 100_000);
  });
});

describe("generate on TinyStories-656K", () => {
  it("20,000 tokens keep the cache and kv_cache_bytes constant, and the text stays in the model's vocabulary", { timeout: 300_000 }, async (t) => {
    const [model, , stories] = sharedFiles(t, "models/tinystories-656k", "models/tinystories-656k/model.safetensors", "data/tinystories_valid.txt") ?? [];
    if (!model) return;
    const stats = join(scratch, "20k.jsonl");
    const output = join(scratch, "20k.txt");
    const run = await cli([
      "generate",
      "--model_name_or_path",
      model,
      "--prompt",
      "Once upon a time",
      "--max_new_tokens",
      "20000",
      "--min_new_tokens",
      "20000",
      "--do_sample",
      "--seed",
      "1",
      "--attention_sink_window_size",
      "252",
      "--stats_json",
      stats,
      "--stats_every",
      "1000",
      "--output",
      output,
    ]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, /attention_sinks: 4 sink \+ 252 window tokens/);
    const records = jsonLines(await readFile(stats, "utf8"));
    const progress = records.filter((r) => r.event === "progress");
    assert.equal(progress.length, 20);
    for (const r of progress) {
      assert.equal(r.cached_tokens, 256, `cache tokens at ${r.tokens}`);
      assert.equal(r.kv_cache_bytes, 256 * 1024, `kv_cache_bytes at ${r.tokens}`); // 2 layers x K,V x 4 heads x 16 x 4 bytes per token
      // Evicted slots wait in the buffers for at most the compaction interval (64 at most by default).
      assert.ok((r.kv_buffer_bytes as number) <= (256 + 64) * 1024, `kv_buffer_bytes at ${r.tokens}`);
    }
    const rss = progress.map((r) => r.rss_bytes as number);
    // Keeping anything per token (logits: 8 KiB each) would add 150 MiB over the run; the bound leaves the GC's
    // timing on a loaded machine room (RSS is not steady to a few MiB) and still catches that.
    assert.ok(Math.max(...rss.slice(2)) - rss[2] < 96 * 2 ** 20, `RSS ${rss.map((b) => (b / 2 ** 20).toFixed(0)).join(" ")} MiB`);
    const summary = records.at(-1)!;
    assert.deepEqual([summary.event, summary.tokens, summary.seen_tokens, summary.stopped], ["summary", 20000, 20005, "max_new_tokens"]);

    assert.equal(await readFile(output, "utf8"), run.stdout);
    const known = new Set((await readFile(stories, "utf8")).toLowerCase().match(/[a-z]+/g));
    const words = run.stdout.toLowerCase().match(/[a-z]+/g)!;
    const share = (part: string[]) => part.filter((word) => known.has(word)).length / part.length;
    t.diagnostic(`known words: first 1000 ${share(words.slice(0, 1000)).toFixed(3)}, last 1000 ${share(words.slice(-1000)).toFixed(3)}`);
    assert.ok(share(words.slice(-1000)) >= 0.75, "the last 1000 words are mostly TinyStories words");

    // Broken sinks (evicted, or keys left at stale positions) keep every counter above and most words right. So
    // the run's own text streams back through the cache the command used: the run's first 4 tokens (the sinks),
    // then its last STRETCH tokens, well past a full cache. Each token's NLL must be the StreamingLLM oracle's,
    // on weights read from model.safetensors without the converter (a cache without sinks differs by up to a
    // nat here, ten thousand times the tolerance).
    const STRETCH = 400;
    const started = performance.now();
    const backend = await loadTransformersBackend(model, { experiment: "attention_sinks", attention_sink_size: 4, attention_sink_window_size: 252 });
    const head = backend.tokenizer.encode(run.stdout.slice(0, 200)).slice(0, 4);
    const tail = backend.tokenizer.encode(run.stdout.slice(-10 * STRETCH), { add_special_tokens: false }).slice(-STRETCH);
    assert.equal(head[0], 1, "the stream starts with BOS, as the run did");
    assert.equal(tail.length, STRETCH);
    const stream = [...head, ...tail];
    const { spec, weights } = readSafetensorsLlamaWeights(model);
    const oracle = new StreamingReference(spec, weights, { sink_size: 4, window_size: 252 });
    let compared = 0;
    for (let i = 0; i + 1 < stream.length; i++) {
      const nll = referenceNll(await backend.feed([stream[i]]), stream[i + 1]);
      const expected = referenceNll(oracle.forward([stream[i]])[0], stream[i + 1]);
      assert.ok(Math.abs(nll - expected) < 1e-4, `token ${i} of the stream: NLL ${nll}, the oracle ${expected}`);
      compared++;
    }
    assert.equal(compared, stream.length - 1);
    assert.ok(compared > 256 + 100, "well past the full cache");
    assert.deepEqual([backend.stats().cached_tokens, backend.stats().seen_tokens], [256, stream.length - 1]);
    t.diagnostic(`oracle check of ${compared} tokens in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  });

  it("matches plain transformers.js and the reference before the cache fills; past the context `transformers` keeps every token", { timeout: 120_000 }, async (t) => {
    const [model] = sharedFiles(t, "models/tinystories-656k", "models/tinystories-656k/model.safetensors") ?? [];
    const reference = sharedReference(t);
    if (!model || !reference) return;
    const args = ["--model_name_or_path", model, "--prompt", "Once upon a time", "--max_new_tokens", "200"];
    const [sinks, plain, fromBos] = await Promise.all([
      cli(["generate", ...args]),
      cli(["generate", ...args, "--experiment", "transformers"]),
      cli(["generate", "--model_name_or_path", model, "--prompt", "", "--max_new_tokens", "200"]),
    ]);
    for (const run of [sinks, plain, fromBos]) assert.equal(run.code, 0, run.stderr);
    assert.ok(sinks.stdout.startsWith("Once upon a time, "));
    assert.equal(plain.stdout, sinks.stdout);
    // From BOS alone, greedy decoding reproduces the independent implementation's story, ending at EOS.
    const { greedy_from_BOS_text } = reference["tinystories-656k"] as unknown as { greedy_from_BOS_text: string };
    assert.equal(fromBos.stdout, greedy_from_BOS_text + "\n");
    assert.match(fromBos.stderr, /^139 tokens in .*; stopped: eos$/m);

    const stats = join(scratch, "transformers.jsonl");
    const long = await cli(["generate", ...args, "--max_new_tokens", "1500", "--min_new_tokens", "1500", "--experiment", "transformers", "--stats_json", stats]);
    assert.equal(long.code, 0, long.stderr);
    const summary = jsonLines(await readFile(stats, "utf8")).at(-1)!;
    // The dense cache holds all 1505 tokens fed (the prompt's 6, then 1499 generated): it grows without bound.
    assert.deepEqual([summary.cached_tokens, summary.kv_cache_bytes], [1505, 1505 * 1024]);
  });
});

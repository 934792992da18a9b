/**
 * The llama.cpp backend (node-llama-cpp) against the onnxruntime path on the same weights: the shared
 * TinyStories-656K (its safetensors directory, written as GGUF v3 by the package) and stories260K (its GGUF
 * version 1 file, upgraded to v3). Per-token NLL within 1e-4 for every experiment, greedy generation
 * identical to the reference ids, a bounded cache over a long stream that survives garbage collection, a
 * multi-turn chat, and the f16 KV cache's drift.
 *
 * node-llama-cpp is an optional dependency: without it these tests are skipped with the install command,
 * except under CI, where its absence is a failure.
 */
import { before, describe, it, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { runInNewContext } from "node:vm";
import { setFlagsFromString } from "node:v8";
import type { StreamingBackend } from "../src/backend/backend.js";
import type { Experiment } from "../src/backend/experiments.js";
import { convertCheckpointToGguf } from "../src/convert/index.js";
import { Chat } from "../src/generation/chat.js";
import { GenerationSession } from "../src/generation/session.js";
import { NODE_LLAMA_CPP_VERSION } from "../src/llama_cpp/bindings.js";
import { loadLlamaCppBackend, type LlamaCppLoadOptions } from "../src/llama_cpp/backend.js";
import { loadTransformersBackend } from "../src/transformers/backend.js";
import { requireLlamaCpp, WITHOUT_NODE_LLAMA_CPP } from "./support/llama_cpp.js";
import { repositoryRoot, sharedFiles, sharedPath, sharedReference } from "./support/shared_data.js";

const work = mkdtempSync(join(tmpdir(), "attention-sinks-llama-cpp-"));
process.on("exit", () => rmSync(work, { recursive: true, force: true }));

/** The shared models: the source the onnxruntime path loads, and the GGUF v3 file written from it. */
const MODELS = [
  { name: "TinyStories-656K", source: "models/tinystories-656k", gguf: join(work, "tinystories-656k.gguf") },
  { name: "stories260K", source: "models/stories260K/stories260K.v1.gguf", gguf: join(work, "stories260K.gguf") },
];

before(async () => {
  for (const model of MODELS) {
    try {
      await convertCheckpointToGguf(sharedPath(model.source), model.gguf);
    } catch {
      // A missing shared model is reported by the test that needs it.
    }
  }
});

/** The first `count` + 1 token ids of the shared TinyStories text, as `backend` tokenizes them. */
function storyIds(backend: StreamingBackend, count: number): number[] {
  const text = readFileSync(sharedPath("data/tinystories_valid.txt"), "utf8").slice(0, count * 8);
  const ids = backend.tokenizer.encode(text);
  assert.ok(ids.length > count, `the text gives only ${ids.length} tokens`);
  return ids.slice(0, count + 1);
}

/** -log p(next) from logits, in float64. */
function nll(logits: Float32Array, next: number): number {
  let max = -Infinity;
  for (const value of logits) if (value > max) max = value;
  let sum = 0;
  for (const value of logits) sum += Math.exp(value - max);
  return max + Math.log(sum) - logits[next];
}

function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** Per-token NLL of `ids` on a stream: a 100-token prompt (chunked), then one token at a time. */
async function streamNll(backend: StreamingBackend, ids: readonly number[]): Promise<number[]> {
  const prompt = 100;
  const out = [nll(await backend.feed(ids.slice(0, prompt)), ids[prompt])];
  for (let i = prompt; i < ids.length - 1; i++) out.push(nll(await backend.feed([ids[i]]), ids[i + 1]));
  return out;
}

// One thread: the machines that run the tests are shared, and llama.cpp's threads spin waiting for each other.
const THREADS = { threads: 1 };
const SIZES = { attention_sink_size: 4, attention_sink_window_size: 59, ...THREADS };
const PREDICTIONS = 400;

async function loadBoth(t: TestContext, model: (typeof MODELS)[number], options: LlamaCppLoadOptions) {
  const onnx = await loadTransformersBackend(sharedPath(model.source), options);
  const llama = await loadLlamaCppBackend(model.gguf, options);
  t.after(() => llama.dispose());
  return { onnx, llama };
}

describe("llama.cpp backend on the shared models", () => {
  for (const model of MODELS) {
    for (const experiment of ["attention_sinks", "windowed", "transformers"] as const satisfies readonly Experiment[]) {
      it(`${model.name}, ${experiment}: per-token NLL equals the onnxruntime path within 1e-4 (f32 KV)`, async (t) => {
        if (!(await requireLlamaCpp(t)) || !sharedFiles(t, model.source, "data/tinystories_valid.txt")) return;
        const { onnx, llama } = await loadBoth(t, model, { ...SIZES, experiment, context_size: PREDICTIONS + 1 });
        const ids = storyIds(onnx, PREDICTIONS);
        const expected = await streamNll(onnx, ids);
        const actual = await streamNll(llama, ids);
        let worst = 0;
        for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
        const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / values.length;
        t.diagnostic(`ppl ${Math.exp(mean(expected)).toFixed(4)} (onnxruntime) vs ${Math.exp(mean(actual)).toFixed(4)}; max |d nll| ${worst.toExponential(2)}`);
        assert.ok(worst < 1e-4, `max |d nll| ${worst}`);
        const cached = experiment === "transformers" ? PREDICTIONS : 63;
        assert.equal(llama.stats().cached_tokens, cached);
        assert.deepEqual(llama.stats(), { ...onnx.stats(), kv_buffer_bytes: llama.stats().kv_buffer_bytes });
      });
    }
  }

  it("streams share one llama.cpp binding: loading more of them adds no exit hook", async (t) => {
    const model = MODELS[0];
    if (!(await requireLlamaCpp(t)) || !sharedFiles(t, model.source)) return;
    const first = await loadLlamaCppBackend(model.gguf, SIZES);
    t.after(() => first.dispose());
    const hooks = process.listenerCount("beforeExit");
    for (let i = 0; i < 3; i++) await (await loadLlamaCppBackend(model.gguf, SIZES)).dispose();
    assert.equal(process.listenerCount("beforeExit"), hooks);
    // Disposing the others left the shared binding to the first stream.
    const logits = await first.feed([1, 5, 9]);
    assert.ok(logits.length > 0 && logits.every(Number.isFinite));
  });

  it("the f16 KV cache drifts from the exact stream by what the README states", async (t) => {
    const model = MODELS[0];
    if (!(await requireLlamaCpp(t)) || !sharedFiles(t, model.source, "data/tinystories_valid.txt")) return;
    const { onnx } = await loadBoth(t, model, SIZES);
    const half = await loadLlamaCppBackend(model.gguf, { ...SIZES, kv_cache_type: "f16" });
    t.after(() => half.dispose());
    const ids = storyIds(onnx, 600);
    const expected = await streamNll(onnx, ids);
    const actual = await streamNll(half, ids);
    const worst = Math.max(...expected.map((value, i) => Math.abs(actual[i] - value)));
    const ppl = (values: number[]) => Math.exp(values.reduce((a, b) => a + b, 0) / values.length);
    t.diagnostic(`f16 KV: ppl ${ppl(actual).toFixed(4)} against ${ppl(expected).toFixed(4)}; max |d nll| ${worst.toExponential(2)}`);
    // Every K-shift re-rounds the moved keys to f16: far past f32's 1e-4, yet the perplexity stays close.
    assert.ok(worst > 1e-3, `f16 should differ measurably, max |d nll| ${worst}`);
    assert.ok(Math.abs(ppl(actual) / ppl(expected) - 1) < 0.01);
    assert.equal(half.stats().kv_cache_bytes * 2, onnx.stats().kv_cache_bytes);
  });

  it("attention_sink_eviction_interval evicts in blocks: the cache stays within one block of full, at a measured cost in NLL", async (t) => {
    const model = MODELS[0];
    if (!(await requireLlamaCpp(t)) || !sharedFiles(t, model.source, "data/tinystories_valid.txt")) return;
    const { onnx } = await loadBoth(t, model, SIZES);
    const blocks = await loadLlamaCppBackend(model.gguf, { ...SIZES, attention_sink_eviction_interval: 8 });
    t.after(() => blocks.dispose());
    const ids = storyIds(onnx, 600);
    const expected = await streamNll(onnx, ids);
    const actual: number[] = [nll(await blocks.feed(ids.slice(0, 100)), ids[100])];
    const attended = new Set<number>();
    for (let i = 100; i < ids.length - 1; i++) {
      actual.push(nll(await blocks.feed([ids[i]]), ids[i + 1]));
      attended.add(blocks.stats().cached_tokens);
    }
    // Full at 63 tokens: each block of 8 evictions leaves 55, and the cache refills to 63.
    assert.deepEqual([...attended].sort((a, b) => a - b), [56, 57, 58, 59, 60, 61, 62, 63]);
    const worst = Math.max(...expected.map((value, i) => Math.abs(actual[i] - value)));
    const ppl = (values: number[]) => Math.exp(values.reduce((a, b) => a + b, 0) / values.length);
    t.diagnostic(`evicting 8 at a time: ppl ${ppl(actual).toFixed(4)} against ${ppl(expected).toFixed(4)} evicting every token; max |d nll| ${worst.toExponential(2)}`);
    assert.ok(worst > 1e-3, "attending to fewer tokens must change the NLL");
    assert.ok(Math.abs(ppl(actual) / ppl(expected) - 1) < 0.05);
    await assert.rejects(loadLlamaCppBackend(model.gguf, { ...SIZES, attention_sink_eviction_interval: 60 }), /attention_sink_eviction_interval must be an integer from 1 to the window \(59\), got 60/);
  });

  it("greedy generation from BOS reproduces the reference ids before the cache fills", async (t) => {
    const reference = sharedReference(t);
    if (!(await requireLlamaCpp(t)) || !reference || !sharedFiles(t, ...MODELS.map((model) => model.source))) return;
    const expectations = [reference["tinystories-656k"].greedy_from_BOS_ids, reference.stories260K.greedy_from_BOS_ids_first64];
    for (const [i, model] of MODELS.entries()) {
      const expected = expectations[i];
      const llama = await loadLlamaCppBackend(model.gguf, { attention_sink_size: 4, attention_sink_window_size: expected.length + 8, ...THREADS });
      t.after(() => llama.dispose());
      const generated: number[] = [];
      let logits = await llama.feed([1]);
      while (generated.length < expected.length) {
        generated.push(argmax(logits));
        logits = await llama.feed([generated.at(-1)!]);
      }
      assert.deepEqual(generated, expected, model.name);
      assert.equal(llama.stats().seen_tokens, expected.length + 1);
    }
  });

  it("a long stream keeps the cache bounded and exact, across garbage collections", async (t) => {
    const model = MODELS[0];
    if (!(await requireLlamaCpp(t)) || !sharedFiles(t, model.source, "data/tinyshakespeare.txt")) return;
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    const { onnx, llama } = await loadBoth(t, model, { attention_sink_size: 4, attention_sink_window_size: 124, ...THREADS });
    const ids = onnx.tokenizer.encode(readFileSync(sharedPath("data/tinyshakespeare.txt"), "utf8").slice(0, 8000)).slice(0, 2001);
    assert.equal(ids.length, 2001);
    let worst = 0;
    let bytes = -1;
    for (let i = 0; i < 2000; i++) {
      // node-llama-cpp clears a sequence whose object is collected: the stream must hold on to it.
      if (i % 400 === 200) gc();
      const expected = nll(await onnx.feed([ids[i]]), ids[i + 1]);
      worst = Math.max(worst, Math.abs(nll(await llama.feed([ids[i]]), ids[i + 1]) - expected));
      const stats = llama.stats();
      assert.ok(stats.cached_tokens <= 128);
      if (i >= 127) {
        if (bytes < 0) bytes = stats.kv_cache_bytes;
        assert.equal(stats.kv_cache_bytes, bytes, `KV bytes changed at token ${i}`);
      }
    }
    t.diagnostic(`2000 tokens of Tiny Shakespeare, 4 + 124: max |d nll| ${worst.toExponential(2)}, KV ${bytes} bytes`);
    assert.ok(worst < 1e-4, `max |d nll| ${worst}`);
    assert.equal(llama.stats().seen_tokens, 2000);

    // reset() starts over: after it, the same tokens give the same distribution each time.
    llama.reset();
    const first = Float32Array.from(await llama.feed(ids.slice(0, 10)));
    llama.reset();
    assert.equal(llama.stats().seen_tokens, 0);
    assert.deepEqual(Float32Array.from(await llama.feed(ids.slice(0, 10))), first);
  });

  it("chat: a multi-turn conversation replies as the onnxruntime path does", async (t) => {
    const model = MODELS[0];
    if (!(await requireLlamaCpp(t)) || !sharedFiles(t, model.source)) return;
    const { onnx, llama } = await loadBoth(t, model, { attention_sink_size: 4, attention_sink_window_size: 124, ...THREADS });
    const transcripts: string[][] = [];
    for (const backend of [onnx, llama]) {
      const chat = new Chat(new GenerationSession(backend));
      const replies: string[] = [];
      for (const message of ["Once upon a time there was a cat.", "What did the cat do?", "And then?", "The end."]) {
        replies.push((await chat.send(message, { max_new_tokens: 40 })).reply);
      }
      assert.ok(backend.stats().seen_tokens > 128, "the conversation should outgrow the cache");
      transcripts.push(replies);
    }
    assert.deepEqual(transcripts[1], transcripts[0]);
  });
});

describe("node-llama-cpp as an optional dependency", () => {
  it("without it, loading a llama.cpp stream fails naming the install command", async () => {
    const script = `import(${JSON.stringify(new URL("../src/llama_cpp/backend.js", import.meta.url).href)}).then((m) => m.loadLlamaCppBackend("any.gguf")).then(() => process.exit(0), (error) => { console.error(error.name + ": " + error.message); process.exit(3); })`;
    const child = spawnSync(process.execPath, ["--import", WITHOUT_NODE_LLAMA_CPP, "--input-type=module", "-e", script], { encoding: "utf8" });
    assert.equal(child.status, 3, child.stderr);
    assert.match(child.stderr, /LlamaCppUnavailableError: the llama.cpp backend needs node-llama-cpp, an optional dependency that is not installed: run `npm install node-llama-cpp@3\.21\.1`/);
  });

  it("is pinned exactly as an optional peer (and a dev dependency here) at the version the bindings name", () => {
    const pkg = JSON.parse(readFileSync(join(repositoryRoot(), "package.json"), "utf8")) as {
      peerDependencies?: Record<string, string>;
      devDependencies?: Record<string, string>;
      dependencies?: Record<string, string>;
    };
    assert.equal(pkg.peerDependencies?.["node-llama-cpp"], NODE_LLAMA_CPP_VERSION);
    assert.equal(pkg.devDependencies?.["node-llama-cpp"], NODE_LLAMA_CPP_VERSION);
    assert.equal(pkg.dependencies?.["node-llama-cpp"], undefined);
  });
});

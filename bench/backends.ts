/**
 * The package against llama.cpp and plain transformers.js on the same weights, in one process: decode and
 * prefill speed at each thread count and cache size asked for.
 *
 *   npm run bench [-- --threads 1,2 --windows 1020,4092 --sinks 4 --steps 32 --rounds 5 --prefill 1000 --eviction_interval 32]
 *
 * The model is a random-weight Llama of about 26M parameters (hidden 512, 8 layers, vocab 2048), written by
 * the package's own converters as an ONNX directory and as a GGUF v3 file: speed depends on shapes, not on
 * weights. Engines, all through the package's StreamingBackend:
 * - attention-sinks on onnxruntime (transformers.js), sink + window, evicting every token;
 * - plain transformers.js on the same ONNX directory, its full cache, at the sink cache's length;
 * - llama.cpp (node-llama-cpp, f32 KV, flash attention off) with attention sinks, evicting every token (one
 *   K-shift per token), evicting `--eviction_interval` tokens at a time, and dense at the same cache length
 *   (which isolates what its per-token K-shift costs).
 * Measured in interleaved blocks (each round runs one block per engine, so drifts in machine load hit every
 * engine alike): decode ms/token with the cache full, and prefill tokens/s of `--prefill` tokens into an empty
 * cache. Printed: the median of each engine's blocks, and the median over rounds of each round's ratio.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import * as transformers from "@huggingface/transformers";
import type { StreamingBackend } from "../src/backend/backend.js";
import { weightShapes } from "../src/architecture/decoder_spec.js";
import { llamaModelFiles } from "../src/convert/hf_llama.js";
import type { Checkpoint } from "../src/convert/checkpoint.js";
import { writeModelDirectory } from "../src/convert/convert.js";
import { writeLlamaGguf } from "../src/convert/gguf_llama.js";
import { sentencePieceTokenizerFiles, type SentencePieceVocab } from "../src/convert/sentencepiece_tokenizer.js";
import { loadLlamaCppBackend, type LlamaCppStream } from "../src/llama_cpp/backend.js";
import { NODE_LLAMA_CPP_VERSION } from "../src/llama_cpp/bindings.js";
import { loadTransformersBackend } from "../src/transformers/backend.js";
import { randomDecoderWeights } from "../test/support/fixtures/random_weights.js";
import { median } from "./stats.js";
import { benchmarkDecoderSpec } from "./decoder_spec.js";

const { values: flags } = parseArgs({
  options: {
    threads: { type: "string", default: "1,2" },
    sinks: { type: "string", default: "4" },
    windows: { type: "string", default: "1020,4092" },
    steps: { type: "string", default: "64" },
    rounds: { type: "string", default: "5" },
    prefill: { type: "string", default: "1000" },
    eviction_interval: { type: "string", default: "32" },
  },
});
const list = (text: string) => text.split(",").map(Number);
const THREADS = list(flags.threads);
const SINKS = Number(flags.sinks);
const WINDOWS = list(flags.windows);
const STEPS = Number(flags.steps);
const ROUNDS = Number(flags.rounds);
const PREFILL = Number(flags.prefill);
const EVICTION_INTERVAL = Number(flags.eviction_interval);

transformers.env.allowRemoteModels = false;

const spec = benchmarkDecoderSpec(2048, 8);

/** A SentencePiece vocabulary of the model's size: special pieces, the 256 byte pieces, then filler pieces. */
function vocabulary(): SentencePieceVocab {
  const pieces: SentencePieceVocab["pieces"][number][] = [
    { text: "<unk>", score: 0, kind: "unknown" },
    { text: "<s>", score: 0, kind: "control" },
    { text: "</s>", score: 0, kind: "control" },
  ];
  for (let byte = 0; byte < 256; byte++) pieces.push({ text: `<0x${byte.toString(16).toUpperCase().padStart(2, "0")}>`, score: 0, kind: "byte" });
  while (pieces.length < spec.vocab_size) pieces.push({ text: `\u2581w${pieces.length}`, score: -pieces.length, kind: "normal" });
  return { pieces, bosId: 1, eosId: 2, unkId: 0, addBos: true, addEos: false, addSpacePrefix: true, modelMaxLength: 4096 };
}

/** The random model as a checkpoint the converters write. */
function randomCheckpoint(): Checkpoint {
  const weights = randomDecoderWeights(spec, 1);
  const vocab = vocabulary();
  // Room past the largest cache measured, so that a 4096-token cache still evicts lazily.
  const info = { maxPositions: 8192, bosId: 1, eosId: 2 };
  return {
    source: "random-26M",
    inputs: [],
    spec,
    tensors: new Map([...weights].map(([name, tensor]) => [name, { shape: tensor.shape, load: () => ({ shape: tensor.shape, data: tensor.data.slice() }) }])),
    files: llamaModelFiles(spec, info, sentencePieceTokenizerFiles(vocab, "random-26M")),
    vocabulary: vocab,
    close() {},
  };
}

const ids = (n: number, offset = 0) => Array.from({ length: n }, (_, i) => 3 + ((i + offset) * 7919) % (spec.vocab_size - 3));

/** Fills a stream to its capacity and decodes a few tokens, so it evicts on every following token. */
async function warm(stream: StreamingBackend, tokens: number): Promise<void> {
  stream.reset();
  await stream.feed(ids(tokens));
  for (let i = 0; i < 8; i++) await stream.feed([ids(1, tokens + i)[0]]);
}

/** Mean ms/token over `steps` single-token feeds. */
async function decodeBlock(stream: StreamingBackend, steps: number, offset: number): Promise<number> {
  const tokens = ids(steps, offset);
  const start = performance.now();
  for (const token of tokens) await stream.feed([token]);
  return (performance.now() - start) / steps;
}

/** Tokens/s of one prefill of PREFILL tokens into an empty cache. */
async function prefillOnce(stream: StreamingBackend, offset: number): Promise<number> {
  stream.reset();
  const tokens = ids(PREFILL, offset);
  const start = performance.now();
  await stream.feed(tokens);
  return PREFILL / ((performance.now() - start) / 1000);
}

function row(name: string, values: number[], unit: string, digits = 2): string {
  return `| ${name} | ${median(values).toFixed(digits)} ${unit} | ${Math.min(...values).toFixed(digits)} - ${Math.max(...values).toFixed(digits)} |`;
}

interface Measured {
  threads: number;
  capacity: number;
  decode: number[][];
  prefill: number[][];
}

const DECODE_ENGINES = [
  "attention-sinks (onnxruntime), evicting every token",
  "plain transformers.js (onnxruntime), full cache",
  "llama.cpp, attention sinks, evicting every token",
  `llama.cpp, attention sinks, evicting ${EVICTION_INTERVAL} tokens at a time`,
  "llama.cpp, no eviction (dense)",
] as const;
const PREFILL_ENGINES = [DECODE_ENGINES[0], DECODE_ENGINES[2]] as const;

/** Every engine at one thread count and cache size. */
async function measure(dir: string, threads: number, window: number): Promise<Measured> {
  const capacity = SINKS + window;
  const sizes = { attention_sink_size: SINKS, attention_sink_window_size: window, threads };
  // Dense caches grow by every block: they start short so that their mean length is the sink cache's.
  const denseStart = capacity - (ROUNDS * STEPS) / 2 - 8;
  const dense = { experiment: "transformers" as const, context_size: capacity + 16 + ROUNDS * STEPS, threads };
  const onnx: Awaited<ReturnType<typeof loadTransformersBackend>>[] = [];
  const llama: LlamaCppStream[] = [];
  try {
    onnx.push(await loadTransformersBackend(join(dir, "onnx-model"), sizes));
    onnx.push(await loadTransformersBackend(join(dir, "onnx-model"), dense));
    llama.push(await loadLlamaCppBackend(join(dir, "model.gguf"), sizes));
    llama.push(await loadLlamaCppBackend(join(dir, "model.gguf"), { ...sizes, attention_sink_eviction_interval: EVICTION_INTERVAL }));
    llama.push(await loadLlamaCppBackend(join(dir, "model.gguf"), dense));
    const engines: StreamingBackend[] = [...onnx, ...llama];
    for (const stream of engines) await warm(stream, stream.endless ? capacity : denseStart);
    const decode = engines.map(() => [] as number[]);
    for (let round = 0; round < ROUNDS; round++) {
      for (const [e, stream] of engines.entries()) decode[e].push(await decodeBlock(stream, STEPS, round * STEPS));
    }
    const prefillStreams = [engines[0], engines[2]];
    const prefill = prefillStreams.map(() => [] as number[]);
    for (let round = 0; round < ROUNDS; round++) {
      for (const [e, stream] of prefillStreams.entries()) prefill[e].push(await prefillOnce(stream, round));
    }
    return { threads, capacity, decode, prefill };
  } finally {
    for (const stream of llama) await stream.dispose();
    for (const stream of onnx) await stream.model.dispose();
  }
}

function report(m: Measured): string {
  const ratio = (a: number[], b: number[]) => median(a.map((value, i) => value / b[i])).toFixed(2);
  const [sinks, plain, llamaSinks, , llamaDense] = m.decode;
  let text = `\n${m.threads} thread(s), cache ${SINKS} + ${m.capacity - SINKS}\n\ndecode, ${ROUNDS} interleaved blocks of ${STEPS} tokens\n| engine | median | range |\n|---|---|---|\n`;
  for (const [e, name] of DECODE_ENGINES.entries()) text += `${row(name, m.decode[e], "ms/token")}\n`;
  text += `\nprefill of ${PREFILL} tokens into an empty cache, ${ROUNDS} interleaved runs\n| engine | median | range |\n|---|---|---|\n`;
  for (const [e, name] of PREFILL_ENGINES.entries()) text += `${row(name, m.prefill[e], "tokens/s", 0)}\n`;
  return (
    text +
    `\nratios (median over rounds):\n` +
    `  decode, attention-sinks / llama.cpp with attention sinks: ${ratio(sinks, llamaSinks)}\n` +
    `  decode, attention-sinks / llama.cpp dense: ${ratio(sinks, llamaDense)}\n` +
    `  decode, attention-sinks / plain transformers.js: ${ratio(sinks, plain)}\n` +
    `  decode, llama.cpp evicting every token / llama.cpp dense (the K-shift's cost): ${ratio(llamaSinks, llamaDense)}\n` +
    `  prefill, attention-sinks / llama.cpp: ${ratio(m.prefill[0], m.prefill[1])}\n`
  );
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "attention-sinks-bench-backends-"));
  try {
    const checkpoint = randomCheckpoint();
    const parameters = [...weightShapes(spec).values()].reduce((sum, shape) => sum + shape.reduce((a, b) => a * b, 1), 0);
    await writeModelDirectory(checkpoint, join(dir, "onnx-model"));
    writeLlamaGguf(checkpoint, join(dir, "model.gguf"));
    process.stdout.write(
      `random Llama, ${(parameters / 1e6).toFixed(1)}M parameters (hidden ${spec.hidden_size}, ${spec.num_layers} layers, vocab ${spec.vocab_size}), f32 weights and KV; ` +
        `node-llama-cpp ${NODE_LLAMA_CPP_VERSION}, flash attention off\n`,
    );
    for (const threads of THREADS) {
      for (const window of WINDOWS) process.stdout.write(report(await measure(dir, threads, window)));
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();

/**
 * The two backends side by side on the same weights, in one process: onnxruntime (transformers.js) and
 * llama.cpp (node-llama-cpp), both streaming with attention sinks through the package's StreamingBackend.
 *
 *   npm run build && node dist/bench/backends.js [--threads 2 --sinks 4 --window 1020 --steps 64 --rounds 5 --prefill 1000 --eviction_interval 32]
 *
 * The model is a random-weight Llama of about 26M parameters (hidden 512, 8 layers, vocab 2048), written by
 * the package's own converters as an ONNX directory and as a GGUF v3 file: speed depends on shapes, not on
 * weights. Measured, in interleaved blocks (each round runs one block per engine, so drifts in machine load
 * hit every engine alike):
 * - decode ms/token in steady state: the cache full (sink + window), every token evicting one;
 * - llama.cpp evicting `--eviction_interval` tokens at a time (one K-shift per that many tokens);
 * - llama.cpp decoding at the same mean cache length without evicting (a dense cache with room to spare),
 *   which isolates what its per-token eviction (the K-shift) costs;
 * - prefill tokens/s: `--prefill` tokens fed at once into an empty cache.
 * Printed: the median of each engine's blocks, and the median over rounds of each round's ratio.
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
    threads: { type: "string", default: "2" },
    sinks: { type: "string", default: "4" },
    window: { type: "string", default: "1020" },
    steps: { type: "string", default: "64" },
    rounds: { type: "string", default: "5" },
    prefill: { type: "string", default: "1000" },
    eviction_interval: { type: "string", default: "32" },
  },
});
const THREADS = Number(flags.threads);
const SINKS = Number(flags.sinks);
const WINDOW = Number(flags.window);
const CAPACITY = SINKS + WINDOW;
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
  const info = { maxPositions: 4096, bosId: 1, eosId: 2 };
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

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "attention-sinks-bench-backends-"));
  let llamaSinks: LlamaCppStream | undefined;
  let llamaBlocks: LlamaCppStream | undefined;
  let llamaDense: LlamaCppStream | undefined;
  try {
    const checkpoint = randomCheckpoint();
    const parameters = [...weightShapes(spec).values()].reduce((sum, shape) => sum + shape.reduce((a, b) => a * b, 1), 0);
    await writeModelDirectory(checkpoint, join(dir, "onnx-model"));
    writeLlamaGguf(checkpoint, join(dir, "model.gguf"));
    const sizes = { attention_sink_size: SINKS, attention_sink_window_size: WINDOW, threads: THREADS };
    const onnx = await loadTransformersBackend(join(dir, "onnx-model"), sizes);
    llamaSinks = await loadLlamaCppBackend(join(dir, "model.gguf"), sizes);
    llamaBlocks = await loadLlamaCppBackend(join(dir, "model.gguf"), { ...sizes, attention_sink_eviction_interval: EVICTION_INTERVAL });
    // Dense, with room for every token the blocks add: decoding at the same cache length, never evicting.
    llamaDense = await loadLlamaCppBackend(join(dir, "model.gguf"), { experiment: "transformers", context_size: CAPACITY + 16 + ROUNDS * STEPS, threads: THREADS });
    const engines: [string, StreamingBackend][] = [
      ["onnxruntime, sinks (evicting every token)", onnx],
      ["llama.cpp, sinks (evicting every token)", llamaSinks],
      [`llama.cpp, sinks (evicting ${EVICTION_INTERVAL} tokens at a time)`, llamaBlocks],
      ["llama.cpp, no eviction (dense)", llamaDense],
    ];

    process.stdout.write(
      `random Llama, ${(parameters / 1e6).toFixed(1)}M parameters (hidden ${spec.hidden_size}, ${spec.num_layers} layers, vocab ${spec.vocab_size}), f32 weights and KV, ` +
        `${THREADS} thread(s), cache ${SINKS} + ${WINDOW}; node-llama-cpp ${NODE_LLAMA_CPP_VERSION}, flash attention off\n`,
    );
    // The dense cache grows by every block: it starts short so that its mean length is the sink cache's.
    for (const [, stream] of engines) await warm(stream, stream === llamaDense ? CAPACITY - (ROUNDS * STEPS) / 2 - 8 : CAPACITY);
    const decode = engines.map(() => [] as number[]);
    for (let round = 0; round < ROUNDS; round++) {
      for (const [e, [, stream]] of engines.entries()) decode[e].push(await decodeBlock(stream, STEPS, round * STEPS));
    }
    const prefillEngines = engines.slice(0, 2);
    const prefill = prefillEngines.map(() => [] as number[]);
    for (let round = 0; round < ROUNDS; round++) {
      for (const [e, [, stream]] of prefillEngines.entries()) prefill[e].push(await prefillOnce(stream, round));
    }

    const ratios = (a: number[], b: number[]) => a.map((value, i) => value / b[i]);
    process.stdout.write(`\ndecode at a full cache, ${ROUNDS} interleaved blocks of ${STEPS} tokens\n| engine | median | range |\n|---|---|---|\n`);
    for (const [e, [name]] of engines.entries()) process.stdout.write(`${row(name, decode[e], "ms/token")}\n`);
    process.stdout.write(`\nprefill of ${PREFILL} tokens into an empty cache, ${ROUNDS} interleaved runs\n| engine | median | range |\n|---|---|---|\n`);
    for (const [e, [name]] of prefillEngines.entries()) process.stdout.write(`${row(name, prefill[e], "tokens/s", 0)}\n`);
    process.stdout.write(
      `\nratios (median over rounds):\n` +
        `  decode, onnxruntime / llama.cpp (both evicting): ${median(ratios(decode[0], decode[1])).toFixed(2)}\n` +
        `  decode, llama.cpp evicting every token / llama.cpp dense (the K-shift's cost): ${median(ratios(decode[1], decode[3])).toFixed(2)}\n` +
        `  decode, llama.cpp evicting ${EVICTION_INTERVAL} at a time / llama.cpp dense: ${median(ratios(decode[2], decode[3])).toFixed(2)}\n` +
        `  prefill, onnxruntime / llama.cpp: ${median(ratios(prefill[0], prefill[1])).toFixed(2)}\n`,
    );
  } finally {
    await llamaSinks?.dispose();
    await llamaBlocks?.dispose();
    await llamaDense?.dispose();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();

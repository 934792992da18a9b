/**
 * node-llama-cpp, an optional dependency, loaded only when a llama.cpp stream is asked for, and the few
 * lower-level calls of its native context that streaming needs: batches with explicit positions, removing
 * and shifting a sequence's cells, and a step's full distribution. The public sequence API keeps its own
 * token list and context shift (which erases from the start and re-evaluates), so a stream drives the native
 * context directly, through the typed surface below; node-llama-cpp is pinned exactly because of it.
 */
import type { Llama, LlamaContext, LlamaContextSequence, LlamaModel } from "node-llama-cpp";
import { OPTIONAL_DEPENDENCIES } from "../platform/optional_dependency.js";

/** The node-llama-cpp release this package is built and tested against (an optional peer dependency). */
export const NODE_LLAMA_CPP_VERSION = OPTIONAL_DEPENDENCIES["node-llama-cpp"];

export class LlamaCppUnavailableError extends Error {
  override name = "LlamaCppUnavailableError";
}

type NodeLlamaCpp = typeof import("node-llama-cpp");
let loaded: Promise<NodeLlamaCpp> | undefined;

/**
 * Imports node-llama-cpp; when it is not installed, an error naming the command that installs it.
 * @internal (kept out of the published types, which must not need node-llama-cpp)
 */
export function importNodeLlamaCpp(): Promise<NodeLlamaCpp> {
  loaded ??= import("node-llama-cpp").catch((error: unknown) => {
    loaded = undefined;
    const { code, message } = error as NodeJS.ErrnoException;
    if (code === "ERR_MODULE_NOT_FOUND" && message.includes("node-llama-cpp")) {
      throw new LlamaCppUnavailableError(
        `the llama.cpp backend needs node-llama-cpp, an optional dependency that is not installed: run \`npm install node-llama-cpp@${NODE_LLAMA_CPP_VERSION}\` (or use the onnxruntime backend)`,
        { cause: error },
      );
    }
    throw error;
  });
  return loaded;
}

let llama: Promise<Llama> | undefined;

/**
 * The process's one llama.cpp binding (CPU), shared by every stream: each `getLlama()` call would load and
 * initialise another, and register another exit hook.
 * @internal (kept out of the published types, which must not need node-llama-cpp)
 */
export function sharedLlama(): Promise<Llama> {
  llama ??= importNodeLlamaCpp()
    .then(({ getLlama, LlamaLogLevel }) => getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false }))
    .catch((error: unknown) => {
      llama = undefined;
      throw error;
    });
  return llama;
}

/** The native context's calls a stream uses (node-llama-cpp's `AddonContext`). */
export interface NativeContext {
  initBatch(size: number): void;
  /** Queues `tokens` of a sequence at positions from `firstPosition`; returns the batch indices of `logitIndexes`. */
  addToBatch(sequenceId: number, firstPosition: number, tokens: Uint32Array, logitIndexes: Uint32Array): Uint32Array;
  decodeBatch(): Promise<void>;
  /** With `probabilities`, the distribution after the sampler: [token, probability, token, probability, ...]. */
  sampleToken(batchLogitIndex: number, sampler: NativeSampler, probabilities: true): Promise<[token: number, probabilities: number[] | undefined]>;
  /** Removes the sequence's cells at positions [start, end). */
  removeTokenCellsFromSequence(sequenceId: number, start: number, end: number): boolean;
  /** Adds `delta` to the positions of the sequence's cells at [start, end); keys are re-rotated at the next decode. */
  shiftSequenceTokenCells(sequenceId: number, start: number, end: number, delta: number): void;
  disposeSequence(sequenceId: number): void;
}

export interface NativeSampler {
  applyConfig(config: { temperature: number }): void;
  dispose(): void;
}

/**
 * The native context of a context, its one sequence, and a greedy sampler. The caller keeps `sequence`
 * referenced for as long as it streams: node-llama-cpp clears a sequence's cells once its object is
 * garbage-collected.
 */
/** @internal */
export function nativeParts(
  llama: Llama,
  model: LlamaModel,
  context: LlamaContext,
): { native: NativeContext; sequence: LlamaContextSequence; sequenceId: number; sampler: NativeSampler } {
  type Internals = { _ctx: NativeContext };
  type SequenceInternals = { _sequenceId: number };
  type Bindings = { _bindings: { AddonSampler: new (model: unknown) => NativeSampler } };
  const sequence = context.getSequence();
  const sampler = new (llama as unknown as Bindings)._bindings.AddonSampler((model as unknown as { _model: unknown })._model);
  // Greedy: llama.cpp's greedy sampler only marks the best token, so every token keeps its probability.
  sampler.applyConfig({ temperature: 0 });
  return { native: (context as unknown as Internals)._ctx, sequence, sequenceId: (sequence as unknown as SequenceInternals)._sequenceId, sampler };
}

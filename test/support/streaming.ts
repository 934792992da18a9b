/** Shared helpers for tests that stream tiny fixture models through transformers.js. */
import { rmSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as transformers from "@huggingface/transformers";
import { Tensor } from "@huggingface/transformers";
import { writeTinyModel, type TinyVariant } from "./fixtures/tiny_models.js";
import type { DecoderSpec, DecoderWeights } from "../../src/architecture/decoder_spec.js";
import type { Experiment } from "../../src/perplexity/index.js";
import type { ReferencePolicy } from "./reference/streaming_reference.js";

transformers.env.allowRemoteModels = false;

export interface Fixture {
  dir: string;
  spec: DecoderSpec;
  weights: DecoderWeights;
  config: Record<string, unknown>;
}

const fixtures = new Map<string, Promise<Fixture>>();

/** A tiny random model of a variant, written once per test process. */
export function fixture(variant: TinyVariant, max_positions?: number): Promise<Fixture> {
  const key = `${variant}:${max_positions ?? ""}`;
  let made = fixtures.get(key);
  if (!made) {
    made = (async () => {
      const dir = await mkdtemp(join(tmpdir(), `attention-sinks-${variant}-`));
      process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
      const written = await writeTinyModel(dir, variant, { seed: 7, ...(max_positions ? { max_positions } : {}) });
      return { dir, ...written };
    })();
    fixtures.set(key, made);
  }
  return made;
}

export function ids(tokens: readonly number[], batch = 1): Tensor {
  const length = tokens.length / batch;
  return new Tensor("int64", BigInt64Array.from(tokens.map(BigInt)), [batch, length]);
}

/** Deterministic pseudo-random token ids in [1, vocab). */
export function tokenStream(length: number, vocab: number, seed = 1): number[] {
  let state = seed >>> 0;
  const out: number[] = [];
  for (let i = 0; i < length; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out.push(1 + (state % (vocab - 1)));
  }
  return out;
}

/** Row `row` of token `token` of a [batch, length, vocab] logits tensor. */
export function logitsAt(logits: Tensor, row: number, token: number): Float32Array {
  const [, length, vocab] = logits.dims;
  const data = logits.data as Float32Array;
  const start = (row * length + token) * vocab;
  return data.subarray(start, start + vocab);
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

/**
 * The documented chunking of long inputs: fill the free room first, then chunks of half a window.
 * (Restated here so the oracle gets the same forward passes as the library.)
 */
export function chunkPlan(length: number, cached: number, sink: number, window: number): number[] {
  const chunks: number[] = [];
  let attended = cached;
  for (let remaining = length; remaining > 0; ) {
    const free = sink + window - attended;
    const n = free > 0 ? Math.min(remaining, free) : Math.min(remaining, Math.max(1, Math.ceil(window / 2)));
    chunks.push(n);
    attended = Math.min(sink + window, attended + n);
    remaining -= n;
  }
  return chunks;
}

/** The cache each benchmark experiment keeps for a window of `window` tokens, as the oracle states it. */
export function experimentPolicies(sinks: number, window: number): Record<Experiment, ReferencePolicy> {
  return {
    attention_sinks: { sink_size: sinks, window_size: window - sinks },
    windowed: { sink_size: 0, window_size: window },
    transformers: { sink_size: 0, window_size: null },
  };
}

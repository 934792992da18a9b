/**
 * What a token of the attention_sinks experiment costs next to the model alone: the experiment's step in
 * steady state (cache full, evicting every token; the forward pass and its loss, as the CSV's latency counts
 * it) against a bare onnxruntime run of the same model attending to as many tokens, with its inputs built
 * beforehand. Rounds of the two alternate, so drifts of the machine's speed fall on both alike.
 */
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { Tensor, type PreTrainedModel } from "@huggingface/transformers";
import type { Tensor as OrtTensor } from "onnxruntime-common";
import { tokenNll } from "../src/perplexity/evaluate.js";
import { NEW_TOKEN_MASK_VALUE } from "../src/onnx/new_kv_only.js";
import { decoderSession, returnsNewKvOnly, type DecoderSession } from "../src/transformers/decoder_contract.js";
import { DenseStream, loadTransformersBackend } from "../src/transformers/backend.js";
import { median } from "./stats.js";

export interface StepTimeOptions {
  /** A transformers.js model directory or a convertible checkpoint. */
  model_name_or_path: string;
  /** Tokens attention sees (sinks included). */
  window_size: number;
  attention_sink_size: number;
  /** Token ids to feed (repeated when the run needs more). */
  tokens: readonly number[];
  /** Timed tokens per round and side (default 200). */
  steps?: number;
  /** Rounds; each time reported is the median over them (default 5). */
  rounds?: number;
}

export interface StepTimeResult {
  /** Tokens every timed forward pass attends to: window_size. */
  cache_tokens: number;
  /** Milliseconds per token of the attention_sinks experiment: forward pass through the sink cache and loss. */
  sink_ms: number;
  /** Milliseconds per bare onnxruntime forward pass over `cache_tokens` tokens. */
  bare_ms: number;
  /** sink_ms / bare_ms. */
  ratio: number;
}

function int64(values: readonly number[]): Tensor {
  return new Tensor("int64", BigInt64Array.from(values, BigInt), [1, values.length]);
}

export async function compareStepTime(options: StepTimeOptions): Promise<StepTimeResult> {
  const steps = options.steps ?? 200;
  const rounds = options.rounds ?? 5;
  const length = options.window_size;
  const token = (i: number) => options.tokens[i % options.tokens.length];

  const { model_name_or_path, window_size, attention_sink_size } = options;
  const sink = await loadTransformersBackend(model_name_or_path, { experiment: "attention_sinks", window_size, attention_sink_size });
  let fed = 0;
  const sinkSteps = async (count: number) => {
    for (let end = fed + count; fed < end; fed++) tokenNll(await sink.feed([token(fed)]), token(fed + 1));
  };
  // Past the fill and the first compactions, and warmed up.
  await sinkSteps(2 * length + steps);

  const plain = await loadTransformersBackend(model_name_or_path, { experiment: "transformers" });
  if (!(plain instanceof DenseStream)) throw new Error("the transformers experiment loads a dense stream");
  const bare = await bareForward(plain.model, Array.from({ length }, (_, i) => token(i)));
  for (let i = 0; i < steps; i++) await bare(token(i));

  const sinkTimes: number[] = [];
  const bareTimes: number[] = [];
  for (let round = 0; round < rounds; round++) {
    let start = performance.now();
    await sinkSteps(steps);
    sinkTimes.push((performance.now() - start) / steps);
    start = performance.now();
    for (let i = 0; i < steps; i++) await bare(token(i));
    bareTimes.push((performance.now() - start) / steps);
  }
  const sink_ms = median(sinkTimes);
  const bare_ms = median(bareTimes);
  return { cache_tokens: length, sink_ms, bare_ms, ratio: sink_ms / bare_ms };
}

/**
 * A forward pass of the model's onnxruntime session alone: one new token after the keys and values of all
 * but the last of `context` (computed once), so each pass attends to `context.length` tokens. Graphs that can
 * return the new keys and values alone are run so, their cheapest pass.
 */
async function bareForward(model: PreTrainedModel, context: readonly number[]): Promise<(token: number) => Promise<void>> {
  const session: DecoderSession = decoderSession(model);
  const past = context.slice(0, -1);
  const prefill = (await model.forward({ input_ids: int64(past), attention_mask: int64(past.map(() => 1)), past_key_values: null })) as Record<string, Tensor>;
  const feeds: Record<string, OrtTensor> = {};
  const fixed: Record<string, Tensor> = {
    attention_mask: int64(context.map((_, i) => (i === past.length && returnsNewKvOnly(session) ? NEW_TOKEN_MASK_VALUE : 1))),
    position_ids: int64([past.length]),
    num_logits_to_keep: new Tensor("int64", BigInt64Array.of(1n), []),
    use_cache_branch: new Tensor("bool", [true], [1]),
  };
  for (const name of session.inputNames) {
    const tensor = name.startsWith("past_key_values.") ? prefill[name.replace("past_key_values.", "present.")] : fixed[name];
    if (tensor) feeds[name] = tensor.ort_tensor as OrtTensor;
    else if (name !== "input_ids") throw new Error(`the model takes an input ${name} this benchmark does not know`);
  }
  return async (token) => {
    await session.run({ ...feeds, input_ids: int64([token]).ort_tensor as OrtTensor });
  };
}

/**
 *   node dist/bench/perplexity_overhead.js MODEL TEXT_FILE WINDOW        (after `npm run build`)
 */
async function main(argv: readonly string[]): Promise<void> {
  const [model, text, window] = argv;
  if (!model || !text || !window) throw new Error("usage: node dist/bench/perplexity_overhead.js MODEL TEXT_FILE WINDOW");
  const { tokenizer } = await loadTransformersBackend(model, { experiment: "transformers" });
  const tokens = tokenizer.encode(readFileSync(text, "utf8").slice(0, 50_000));
  const r = await compareStepTime({ model_name_or_path: model, window_size: Number(window), attention_sink_size: 4, tokens, steps: 500, rounds: 7 });
  console.log(
    `speed at ${r.cache_tokens} cached tokens: attention_sinks ${r.sink_ms.toFixed(3)} ms/token, ` +
      `bare forward ${r.bare_ms.toFixed(3)} ms/token, ratio ${r.ratio.toFixed(2)}`,
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main(process.argv.slice(2));

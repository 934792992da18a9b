/**
 * The demo's worker: loads the picked folder's model twice (with attention sinks, and as plain
 * transformers.js) and streams sampled text for ever through the sink cache, feeding the same tokens to the
 * plain model until its limit, so the page can chart both caches on one sequence.
 */
import * as transformers from "@huggingface/transformers";
import { AutoModelForCausalLM, AutoTokenizer, DynamicCache, IncrementalTextDecoder, Tensor, cacheStats, env } from "attention-sinks";
import type { FromWorker, StartMessage, StreamReport, ToWorker } from "./protocol.js";

interface WorkerScope {
  onmessage: ((event: MessageEvent<ToWorker>) => void) | null;
  postMessage(message: FromWorker): void;
  location: { href: string };
}
const scope = self as unknown as WorkerScope;

/** transformers.js fetches the picked folder's files under this (made-up) local model path. */
const MODEL_ROOT = "/picked-folder/";
const MODEL_ID = "model";
const TEMPERATURE = 0.8;
const TOP_K = 40;
/** How often the page hears of the streams. */
const REPORT_EVERY_MS = 100;

let stopping = false;

scope.onmessage = (event) => {
  if (event.data.type === "stop") stopping = true;
  else stream(event.data).catch((error: unknown) => scope.postMessage({ type: "error", message: error instanceof Error ? error.message : String(error) }));
};

/** Serves the picked files to transformers.js by name (`onnx/model.onnx` is found as `model.onnx`). */
function pickedFolderFetch(files: readonly File[]): typeof env.fetch {
  const byName = new Map(files.map((file) => [file.name, file]));
  const networkFetch = env.fetch;
  return async (input, init) => {
    const path = new URL(input, scope.location.href).pathname;
    if (!path.startsWith(MODEL_ROOT)) return networkFetch(input, init);
    const file = byName.get(path.split("/").pop()!);
    return file ? new Response(file, { headers: { "Content-Length": String(file.size) } }) : new Response(null, { status: 404 });
  };
}

/** A seeded top-k sampler, so a run can be repeated. */
function sampler(seed: number): (logits: Float32Array, banned: number | null) => number {
  let state = seed >>> 0 || 1;
  const uniform = () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
  return (logits, banned) => {
    const top = Array.from(logits.keys())
      .filter((id) => id !== banned)
      .sort((a, b) => logits[b] - logits[a])
      .slice(0, TOP_K);
    const weights = top.map((id) => Math.exp((logits[id] - logits[top[0]]) / TEMPERATURE));
    let pick = uniform() * weights.reduce((a, b) => a + b, 0);
    for (let i = 0; i < top.length; i++) if ((pick -= weights[i]) <= 0) return top[i];
    return top[top.length - 1];
  };
}

/** Tokens per second of one stream over its time spent in the model. */
class Speed {
  private tokens = 0;
  private seconds = 0;
  add(tokens: number, seconds: number): void {
    this.tokens += tokens;
    this.seconds += seconds;
  }
  get value(): number {
    return this.seconds > 0 ? this.tokens / this.seconds : 0;
  }
}

function ids(tokens: readonly number[]): Tensor {
  return new Tensor("int64", BigInt64Array.from(tokens, BigInt), [1, tokens.length]);
}

async function stream(start: StartMessage): Promise<void> {
  stopping = false;
  env.allowLocalModels = true;
  env.allowRemoteModels = false;
  env.localModelPath = MODEL_ROOT;
  env.useBrowserCache = false;
  env.backends.onnx.wasm!.wasmPaths = new URL("./ort/", scope.location.href).href;
  env.fetch = pickedFolderFetch(start.files);
  const loadStart = performance.now();
  const options = { dtype: "fp32", device: "wasm" } as const;
  const model = await AutoModelForCausalLM.from_pretrained(MODEL_ID, {
    ...options,
    attention_sink_size: start.attention_sink_size,
    attention_sink_window_size: start.attention_sink_window_size,
  });
  const plain = start.plain_tokens > 0 ? await transformers.AutoModelForCausalLM.from_pretrained(MODEL_ID, options) : null;
  const tokenizer = await AutoTokenizer.from_pretrained(MODEL_ID);
  scope.postMessage({ type: "loaded", model_type: String(model.config.model_type), load_seconds: (performance.now() - loadStart) / 1000 });

  const eos = (model.generation_config as { eos_token_id?: number | number[] } | null)?.eos_token_id ?? null;
  const banned = Array.isArray(eos) ? (eos[0] ?? null) : eos; // an endless stream never ends its text
  const sample = sampler(1);
  const decoder = new IncrementalTextDecoder(tokenizer);
  const sinkCache = new DynamicCache();
  const plainCache = new DynamicCache();
  const sinkSpeed = new Speed();
  const plainSpeed = new Speed();
  let input = tokenizer.encode(start.prompt);
  let text = start.prompt;
  let lastReport = performance.now();
  while (!stopping) {
    const t0 = performance.now();
    const out = await model.forward({ input_ids: ids(input), past_key_values: sinkCache, num_logits_to_keep: 1 });
    sinkSpeed.add(input.length, (performance.now() - t0) / 1000);
    if (plain && cacheStats(plainCache).seen_tokens < start.plain_tokens) {
      const t1 = performance.now();
      await plainStep(plain, plainCache, input);
      plainSpeed.add(input.length, (performance.now() - t1) / 1000);
    }
    const next = sample(out.logits.data as Float32Array, banned);
    text += decoder.push(BigInt(next));
    input = [next];
    if (performance.now() - lastReport >= REPORT_EVERY_MS) {
      report(text, sinkCache, sinkSpeed, plain ? { cache: plainCache, speed: plainSpeed } : null);
      text = "";
      lastReport = performance.now();
      await new Promise((resolve) => setTimeout(resolve, 0)); // lets a stop message in
    }
  }
  report(text + decoder.flush(), sinkCache, sinkSpeed, plain ? { cache: plainCache, speed: plainSpeed } : null);
  await model.dispose();
  await plain?.dispose();
  scope.postMessage({ type: "stopped" });
}

/** One pass of plain transformers.js: every token stays in its cache, at its absolute position. */
async function plainStep(model: transformers.PreTrainedModel, cache: DynamicCache, tokens: readonly number[]): Promise<void> {
  const length = cache.get_seq_length() + tokens.length;
  const attention_mask = new Tensor("int64", new BigInt64Array(length).fill(1n), [1, length]);
  const out = (await model.forward({ input_ids: ids(tokens), attention_mask, past_key_values: cache })) as Record<string, Tensor>;
  const presents: Record<string, Tensor> = {};
  for (const [name, tensor] of Object.entries(out)) {
    if (name.startsWith("present.")) presents[name.replace("present.", "past_key_values.")] = tensor;
  }
  cache.update(presents);
}

function report(text: string, sinkCache: DynamicCache, sinkSpeed: Speed, plain: { cache: DynamicCache; speed: Speed } | null): void {
  const sinks: StreamReport = { stats: cacheStats(sinkCache), tokens_per_second: sinkSpeed.value };
  const plainReport = plain ? { stats: cacheStats(plain.cache), tokens_per_second: plain.speed.value } : null;
  scope.postMessage({ type: "step", text, sinks, plain: plainReport });
}

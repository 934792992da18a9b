/**
 * One greedy stream through a streaming model, written once and run both in Node (on the package's Node entry)
 * and in a page (on its browser bundle), so the two runs differ only in where they run.
 */
import type * as Package from "../../../src/browser.js";

/** The part of the package the stream uses: either entry provides it. */
export type StreamingApi = Pick<typeof Package, "AutoModelForCausalLM" | "AutoTokenizer" | "DynamicCache" | "Tensor" | "cacheStats" | "pipeline">;

export interface GreedyStreamRequest {
  /** What `from_pretrained` gets: a folder in Node, a name under `env.localModelPath` in a page. */
  model: string;
  /** A text (the model's tokenizer encodes it, and the ids are decoded back) or token ids. */
  prompt: string | number[];
  new_tokens: number;
  attention_sink_size: number;
  attention_sink_window_size: number;
  /** transformers.js's device: "cpu" in Node, "wasm" or "webgpu" in a page. */
  device: string;
  /** Return every step's logits (for small vocabularies). */
  keep_logits?: boolean;
}

export interface GreedyStreamResult {
  ids: number[];
  /** The decoded continuation, when the prompt was text. */
  text: string | null;
  /** The most tokens the cache attended at any step, and what it had seen at the end. */
  max_cached_tokens: number;
  seen_tokens: number;
  kv_cache_bytes: number;
  /** Decode speed after the prompt, and the time to load the model. */
  tokens_per_second: number;
  load_seconds: number;
  logits: number[][] | null;
  /** The GPU's transfers while decoding (bytes of each), where the page records them (else null). */
  decode_transfers: GpuTransfers | null;
}

export interface GpuTransfers {
  downloads: number[];
  uploads: number[];
}

/** The page's record of transfers between GPU and page (test/support/browser/page.ts), where there is one. */
const transfers = () => (globalThis as { gpuTransfers?: () => GpuTransfers }).gpuTransfers?.() ?? null;

export async function greedyStream(api: StreamingApi, request: GreedyStreamRequest): Promise<GreedyStreamResult> {
  const loadStart = performance.now();
  const options = { attention_sink_size: request.attention_sink_size, attention_sink_window_size: request.attention_sink_window_size };
  const model = await api.AutoModelForCausalLM.from_pretrained(request.model, { ...options, dtype: "fp32", device: request.device as "cpu" });
  const tokenizer = typeof request.prompt === "string" ? await api.AutoTokenizer.from_pretrained(request.model) : null;
  const load_seconds = (performance.now() - loadStart) / 1000;
  const promptIds = tokenizer ? tokenizer.encode(request.prompt as string) : (request.prompt as number[]);
  const cache = new api.DynamicCache();
  const ids: number[] = [];
  const logits: number[][] = [];
  let max_cached_tokens = 0;
  let input = promptIds;
  let decodeStart = 0;
  let transfersAtStart: { downloads: number; uploads: number } | null = null;
  for (let step = 0; step < request.new_tokens; step++) {
    if (step === 1) {
      decodeStart = performance.now(); // the prompt's pass is not decoding
      const record = transfers();
      transfersAtStart = record && { downloads: record.downloads.length, uploads: record.uploads.length };
    }
    const out = await model.forward({
      input_ids: new api.Tensor("int64", BigInt64Array.from(input, BigInt), [1, input.length]),
      past_key_values: cache,
      num_logits_to_keep: 1,
    });
    const row = out.logits.data as Float32Array;
    let next = 0;
    for (let v = 1; v < row.length; v++) if (row[v] > row[next]) next = v;
    if (request.keep_logits) logits.push(Array.from(row));
    ids.push(next);
    input = [next];
    max_cached_tokens = Math.max(max_cached_tokens, api.cacheStats(cache).cached_tokens);
  }
  const seconds = (performance.now() - decodeStart) / 1000;
  const record = transfers();
  const decode_transfers =
    record && transfersAtStart ? { downloads: record.downloads.slice(transfersAtStart.downloads), uploads: record.uploads.slice(transfersAtStart.uploads) } : null;
  const stats = api.cacheStats(cache);
  await model.dispose();
  return {
    ids,
    text: tokenizer ? tokenizer.decode(ids, { skip_special_tokens: false }) : null,
    max_cached_tokens,
    seen_tokens: stats.seen_tokens,
    kv_cache_bytes: stats.kv_cache_bytes,
    tokens_per_second: (request.new_tokens - 1) / seconds,
    load_seconds,
    logits: request.keep_logits ? logits : null,
    decode_transfers,
  };
}

/** The `text-generation` pipeline's greedy continuation of a prompt, through the sink cache. */
export async function pipelineGreedy(api: StreamingApi, request: Omit<GreedyStreamRequest, "keep_logits" | "prompt"> & { prompt: string }): Promise<string> {
  const generator = await api.pipeline("text-generation", request.model, {
    attention_sink_size: request.attention_sink_size,
    attention_sink_window_size: request.attention_sink_window_size,
    dtype: "fp32",
    device: request.device as "cpu",
  });
  const [output] = (await generator(request.prompt, { max_new_tokens: request.new_tokens, do_sample: false })) as { generated_text: string }[];
  await generator.dispose();
  return output.generated_text;
}

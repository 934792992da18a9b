/**
 * The transformers.js implementation of {@link StreamingBackend}, and the one place models are loaded for a
 * stream: the CLI commands, the perplexity benchmark and the benchmark scripts all come here.
 */
import { existsSync } from "node:fs";
import * as transformers from "@huggingface/transformers";
import { DynamicCache, Tensor, type DataType, type DeviceType, type PreTrainedModel, type PreTrainedTokenizer } from "@huggingface/transformers";
import type { ChatMessage, FeedOptions, StreamingBackend, TextTokenizer } from "../backend/backend.js";
import { decodeStateRecord, encodeStateRecord, StateRecordError } from "../backend/state_record.js";
import { experimentCache, type CacheSizes, type Experiment } from "../backend/experiments.js";
import { DEFAULT_ATTENTION_SINK_WINDOW_SIZE } from "../cache/options.js";
import type { SinkCacheStats } from "../cache/sink_cache.js";
import { resolveStreamingPolicy, type AttentionSinkSettings } from "../cache/streaming_policy.js";
import { checkTokenizerFiles, ModelNotFoundError, resolveModelSource, type ResolveModelSourceOptions } from "../convert/index.js";
import { float16ToFloat32Table } from "../onnx/float16.js";
import { resolveGeometry, SUPPORTED_MODEL_TYPES, type ModelConfig } from "../positions/families.js";
import { checkCacheGeometry, decoderInputs, decoderSession, kvType, pastName, presentName } from "./decoder_contract.js";
import { enableAttentionSinks, streamingDecoderOf, type AttentionSinkModel } from "./enable.js";
import { checkLoadedGraph } from "./graph_checks.js";
import { cacheStats } from "./stream_registry.js";

export interface BackendLoadOptions extends CacheSizes, Pick<ResolveModelSourceOptions, "tokenizer" | "onConvert"> {
  experiment?: Experiment;
  dtype?: DataType;
  device?: DeviceType;
  /** The model revision, for Hub models. */
  revision?: string;
  /** CPU threads onnxruntime computes with (its intra-op threads; default: onnxruntime's choice). */
  threads?: number;
}

/** A transformers.js tokenizer seen through {@link TextTokenizer}. */
export class TransformersTokenizer implements TextTokenizer {
  readonly bos_token_id: number | null;
  readonly add_bos_token: boolean;

  constructor(readonly tokenizer: PreTrainedTokenizer) {
    this.bos_token_id = tokenizer.bos_token_id ?? null;
    this.add_bos_token = (tokenizer.config as { add_bos_token?: unknown }).add_bos_token === true;
  }

  encode(text: string, options: { add_special_tokens?: boolean } = {}): number[] {
    return this.tokenizer.encode(text, options);
  }

  decode(ids: number[] | bigint[], options: { skip_special_tokens?: boolean } = {}): string {
    return this.tokenizer.decode(ids, options);
  }

  get has_chat_template(): boolean {
    return Boolean(this.tokenizer.chat_template);
  }

  renderChat(messages: readonly ChatMessage[], add_generation_prompt: boolean): string {
    return this.tokenizer.apply_chat_template([...messages], { tokenize: false, add_generation_prompt }) as string;
  }
}

/** Logits as float32 (fp16 exports return float16 bits). */
function float32Logits(logits: Tensor): Float32Array {
  if (logits.data instanceof Float32Array) return logits.data;
  if (logits.type === "float16") {
    const table = float16ToFloat32Table();
    return Float32Array.from(logits.data as Uint16Array, (bits) => table[bits]);
  }
  throw new TypeError(`the model returned ${logits.type} logits; attention-sinks reads float32 and float16`);
}

/** The last position's row of [1, n, vocab] logits. */
function lastRow(logits: Tensor): Float32Array {
  const data = float32Logits(logits);
  const vocab = logits.dims.at(-1)!;
  return data.length === vocab ? data : data.subarray(data.length - vocab);
}

function tokenIds(tokens: readonly number[]): Tensor {
  return new Tensor("int64", BigInt64Array.from(tokens, BigInt), [1, tokens.length]);
}

abstract class TransformersStream implements StreamingBackend {
  readonly model_type: string;
  readonly tokenizer: TransformersTokenizer;
  readonly eos_token_ids: readonly number[];
  abstract readonly attention_sinks: AttentionSinkSettings | null;
  abstract readonly endless: boolean;
  protected cache = new DynamicCache();

  constructor(
    readonly model: PreTrainedModel,
    tokenizer: PreTrainedTokenizer,
    readonly window_tokens: number,
  ) {
    this.model_type = String(model.config.model_type);
    this.tokenizer = new TransformersTokenizer(tokenizer);
    type EosConfig = { eos_token_id?: number | number[] | null } | null;
    const eos = (model.generation_config as EosConfig)?.eos_token_id ?? (model.config as EosConfig)?.eos_token_id;
    this.eos_token_ids = [eos ?? []].flat();
  }

  abstract feed(tokens: readonly number[], options?: FeedOptions): Promise<Float32Array>;

  stats(): SinkCacheStats {
    return cacheStats(this.cache);
  }

  reset(): void {
    this.cache = new DynamicCache();
  }

  abstract snapshot(): Uint8Array;
  abstract restore(state: Uint8Array): void;
}

/** A stream through the attention-sink cache. */
export class SinkStream extends TransformersStream {
  readonly endless = true;
  readonly attention_sinks: AttentionSinkSettings;

  constructor(
    override readonly model: PreTrainedModel & AttentionSinkModel,
    tokenizer: PreTrainedTokenizer,
  ) {
    super(model, tokenizer, model.attention_sinks.capacity);
    this.attention_sinks = model.attention_sinks;
  }

  async feed(tokens: readonly number[], options: FeedOptions = {}): Promise<Float32Array> {
    const out = await this.model.forward({ input_ids: tokenIds(tokens), past_key_values: this.cache, num_logits_to_keep: 1, signal: options.signal });
    return lastRow(out.logits);
  }

  snapshot(): Uint8Array {
    const { header, arrays } = streamingDecoderOf(this.model).save(this.cache);
    return encodeStateRecord(STREAM_RECORD, header, arrays);
  }

  restore(state: Uint8Array): void {
    this.cache = streamingDecoderOf(this.model).load(decodeStateRecord(state, STREAM_RECORD));
  }
}

/** Plain transformers.js: every token stays in the cache, at its absolute position. */
export class DenseStream extends TransformersStream {
  readonly endless = false;
  readonly attention_sinks = null;
  private readonly layers: number;
  /** The graph's empty cache, for the families this package knows; otherwise transformers.js makes it. */
  private readonly emptyCache: Record<string, Tensor> | null = null;

  constructor(model: PreTrainedModel, tokenizer: PreTrainedTokenizer, window_tokens: number) {
    super(model, tokenizer, window_tokens);
    const session = decoderSession(model);
    this.layers = decoderInputs(session).num_layers;
    // transformers.js sizes its cache from config.json: a config that does not match the graph must stop here.
    // It also names the cache from config.json, and for multi-query Falcon (`multi_query`) it names one
    // `key_value` input per layer that the graph does not have; the graph's own names are used instead.
    // (Plain transformers.js runs any family; both need one this package knows.)
    const config = model.config as unknown as ModelConfig;
    if (SUPPORTED_MODEL_TYPES.includes(String(config.model_type))) {
      const geometry = resolveGeometry(config);
      checkCacheGeometry(geometry, session);
      const type = kvType(session);
      const empty = () => new Tensor(type, type === "float32" ? new Float32Array(0) : new Uint16Array(0), [1, geometry.num_kv_heads, 0, geometry.head_dim]);
      this.emptyCache = {};
      for (let i = 0; i < this.layers; i++) for (const part of ["key", "value"] as const) this.emptyCache[pastName(i, part)] = empty();
    }
  }

  /** One pass: a dense cache takes the whole input at once, so `signal` is only checked before it. */
  async feed(tokens: readonly number[], options: FeedOptions = {}): Promise<Float32Array> {
    options.signal?.throwIfAborted();
    if (this.emptyCache && this.cache.get_seq_length() === 0) this.cache.update(this.emptyCache);
    const length = this.cache.get_seq_length() + tokens.length;
    const attention_mask = new Tensor("int64", new BigInt64Array(length).fill(1n), [1, length]);
    const out = (await this.model.forward({ input_ids: tokenIds(tokens), attention_mask, past_key_values: this.cache })) as Record<string, Tensor>;
    const presents: Record<string, Tensor> = {};
    for (let i = 0; i < this.layers; i++) {
      for (const part of ["key", "value"] as const) presents[pastName(i, part)] = out[presentName(i, part)];
    }
    this.cache.update(presents);
    return lastRow(out.logits);
  }

  /** Every cached token's keys and values: a dense cache's record grows with the stream. */
  snapshot(): Uint8Array {
    const entries = this.cache as unknown as Record<string, Tensor>;
    const tensors = this.layerNames().map((name) => entries[name]).filter((tensor) => tensor !== undefined);
    const header = { layers: this.layers, dims: tensors.map((tensor) => tensor.dims), type: tensors[0]?.type ?? null };
    return encodeStateRecord(DENSE_RECORD, header, tensors.map((tensor) => (tensor.data as Float32Array | Uint16Array).slice()));
  }

  restore(state: Uint8Array): void {
    const { header, arrays } = decodeStateRecord(state, DENSE_RECORD);
    const dims = header.dims as number[][];
    const names = this.layerNames();
    const type = header.type;
    const fits =
      header.layers === this.layers &&
      Array.isArray(dims) &&
      arrays.length === (dims.length === 0 ? 0 : names.length) &&
      dims.length === arrays.length &&
      (arrays.length === 0 || type === "float32" || type === "float16") &&
      arrays.every((array, i) => array instanceof (type === "float32" ? Float32Array : Uint16Array) && Array.isArray(dims[i]) && dims[i].reduce((a, b) => a * b, 1) === array.length);
    if (!fits) throw new StateRecordError("the saved stream does not fit this model's cache");
    const cache = new DynamicCache();
    const entries = cache as unknown as Record<string, Tensor>;
    arrays.forEach((array, i) => (entries[names[i]] = new Tensor(type as "float32" | "float16", array as Float32Array | Uint16Array, dims[i])));
    this.cache = cache;
  }

  private layerNames(): string[] {
    return Array.from({ length: this.layers }, (_, i) => [pastName(i, "key"), pastName(i, "value")]).flat();
  }
}

const STREAM_RECORD = "attention-sinks stream";
const DENSE_RECORD = "attention-sinks dense stream";

/** What `from_pretrained` gets for a model name: its resolved source, and offline when it is on disk. */
export async function pretrainedSource(
  nameOrPath: string,
  revision?: string,
  conversion: Pick<ResolveModelSourceOptions, "tokenizer" | "onConvert" | "dtype"> = {},
): Promise<{ path: string; files: { local_files_only?: boolean; revision?: string } }> {
  const path = await resolveModelSource(nameOrPath, conversion);
  return { path, files: { ...(existsSync(path) ? { local_files_only: true } : {}), ...(revision === undefined ? {} : { revision }) } };
}

/**
 * Runs a transformers.js load of a resolved source. A name that is not on disk went to the Hub as a model id;
 * when the Hub cannot be reached, transformers.js says only "fetch failed", so this says what was looked for.
 */
export async function loadingFrom<T>(path: string, load: () => Promise<T>): Promise<T> {
  if (!existsSync(path) && !transformers.env.allowRemoteModels) {
    throw new ModelNotFoundError(path, "not found locally, and the Hugging Face Hub is off (transformers.js env.allowRemoteModels is false)");
  }
  try {
    return await load();
  } catch (error) {
    if (existsSync(path) || !(error instanceof TypeError) || error.message !== "fetch failed") throw error;
    const cause = (error.cause as Error | undefined)?.message;
    throw new ModelNotFoundError(
      path,
      `not found locally, and the Hugging Face Hub, where it would be a model id, cannot be reached${cause ? ` (${cause})` : ""}; ` +
        `give the path of a model folder or checkpoint on this machine (./${path} for a relative path)`,
      { cause: error },
    );
  }
}

/** Loads a model and its tokenizer as a stream of one experiment (default `attention_sinks`). */
export async function loadTransformersBackend(nameOrPath: string, options: BackendLoadOptions = {}): Promise<SinkStream | DenseStream> {
  const { path, files } = await pretrainedSource(nameOrPath, options.revision, { tokenizer: options.tokenizer, onConvert: options.onConvert, dtype: options.dtype });
  if (files.local_files_only) checkTokenizerFiles(path);
  const tokenizer = await loadingFrom(path, () => transformers.AutoTokenizer.from_pretrained(path, files));
  const model = await loadingFrom(path, () =>
    transformers.AutoModelForCausalLM.from_pretrained(path, {
      ...files,
      ...(options.dtype === undefined ? {} : { dtype: options.dtype }),
      ...(options.device === undefined ? {} : { device: options.device }),
      ...(options.threads === undefined ? {} : { session_options: { intraOpNumThreads: options.threads } }),
    }),
  );
  const experiment = options.experiment ?? "attention_sinks";
  // Plain transformers.js runs any model, streamable or not: its window only sizes the repetition penalty.
  const defaultWindow = (sinks: number) =>
    experiment === "transformers"
      ? DEFAULT_ATTENTION_SINK_WINDOW_SIZE
      : resolveStreamingPolicy(model.config as unknown as ModelConfig, { attention_sink_size: sinks }, decoderInputs(decoderSession(model))).settings.window_size;
  const { sink_options, window_tokens } = experimentCache(experiment, options, defaultWindow);
  if (sink_options === null) return new DenseStream(model, tokenizer, window_tokens);
  const streaming = enableAttentionSinks(model, sink_options);
  await checkLoadedGraph(path, options.dtype, model.config as unknown as ModelConfig, streaming.attention_sinks);
  return new SinkStream(streaming, tokenizer);
}

/**
 * The transformers.js decoder contract, written once: a decoder session takes `input_ids`, `attention_mask`,
 * `position_ids` (when the graph has them), `num_logits_to_keep` and `use_cache_branch` (in some exports) and
 * `past_key_values.{i}.key/value` of shape [batch, kv_heads, past, head_dim], and returns `logits` and
 * `present.{i}.key/value` (the past with the new tokens appended).
 */
import type { PreTrainedModel } from "@huggingface/transformers";
import type { Tensor as OrtTensor } from "onnxruntime-common";
import type { KvType } from "../cache/kv_data.js";
import { SinkCacheError } from "../cache/sink_cache.js";
import { NEW_KV_ONLY_OUTPUT } from "../onnx/new_kv_only.js";

/** The part of an onnxruntime InferenceSession the package uses. */
export interface DecoderSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputMetadata?: readonly { readonly name: string; readonly type?: string; readonly shape?: readonly (number | string)[] }[];
  run(feeds: Record<string, OrtTensor>): Promise<Record<string, OrtTensor>>;
}

export type KvPart = "key" | "value";

/** The cache input of layer `layer`, as a `DynamicCache` entry and a session feed are named. */
export function pastName(layer: number, part: KvPart): string {
  return `past_key_values.${layer}.${part}`;
}

/** The session output that holds layer `layer`'s cache after a pass. */
export function presentName(layer: number, part: KvPart): string {
  return `present.${layer}.${part}`;
}

/** The optional inputs a decoder graph declares. */
export interface DecoderInputs {
  takes_position_ids: boolean;
  takes_logits_to_keep: boolean;
  takes_cache_branch: boolean;
  /** Layers, counted from the `past_key_values.{i}.key` inputs. */
  num_layers: number;
}

export function decoderInputs(session: DecoderSession): DecoderInputs {
  const inputs = new Set(session.inputNames);
  let num_layers = 0;
  while (inputs.has(pastName(num_layers, "key"))) num_layers++;
  return {
    takes_position_ids: inputs.has("position_ids"),
    takes_logits_to_keep: inputs.has("num_logits_to_keep"),
    takes_cache_branch: inputs.has("use_cache_branch"),
    num_layers,
  };
}

/** Whether the graph can return only the new tokens' keys and values, for a cache written in place. */
export function returnsNewKvOnly(session: DecoderSession): boolean {
  return session.outputNames.includes(NEW_KV_ONLY_OUTPUT);
}

/** The session of a decoder-only transformers.js model. */
export function decoderSession(model: PreTrainedModel): DecoderSession {
  const session = (model.sessions as Record<string, DecoderSession | undefined>).model;
  if (!session) {
    throw new SinkCacheError(
      `attention-sinks needs a decoder-only model with one "model" session; ${model.constructor.name} has sessions: ${Object.keys(model.sessions).join(", ")}`,
    );
  }
  return session;
}

/** The element type of the session's KV cache inputs (float32 when the session does not say). */
export function kvType(session: DecoderSession): KvType {
  const type = session.inputMetadata?.find((input) => input.name === pastName(0, "key"))?.type ?? "float32";
  if (type !== "float32" && type !== "float16") {
    throw new SinkCacheError(`attention-sinks streams float32 and float16 KV caches; this model's cache is ${type}`);
  }
  return type;
}

/** What `config.json` says of the cache, to be held against the graph. */
export interface CacheGeometry {
  num_layers: number;
  num_kv_heads: number;
  head_dim: number;
}

/**
 * Checks the cache `config.json` describes against the graph's `past_key_values.*` inputs, before anything is
 * sized from the config (a wrong layer count would otherwise allocate for every layer it claims).
 */
export function checkCacheGeometry(geometry: CacheGeometry, session: DecoderSession): void {
  const { num_layers } = decoderInputs(session);
  const mismatch = (field: string, config: number, graph: number) =>
    new SinkCacheError(`config.json says ${field} is ${config}, but the model's graph has ${graph}: the config does not belong to this ONNX model`);
  if (geometry.num_layers !== num_layers) throw mismatch("the layer count (num_hidden_layers)", geometry.num_layers, num_layers);
  const shape = session.inputMetadata?.find((input) => input.name === pastName(0, "key"))?.shape;
  if (!shape || shape.length !== 4) return;
  const [, heads, , size] = shape;
  if (typeof heads === "number" && heads !== geometry.num_kv_heads) throw mismatch("the key/value head count", geometry.num_kv_heads, heads);
  if (typeof size === "number" && size !== geometry.head_dim) throw mismatch("the head size (head_dim)", geometry.head_dim, size);
}

/**
 * What `generate()` needs to stream over turns: on the first step of a turn, feed only what the stream has
 * not seen (a re-sent transcript, as a chat template re-renders it, is recognised by its fingerprint),
 * preceded by the last token the previous turn sampled but never fed; afterwards, feed only the sampled token.
 */
import { DynamicCache, Tensor } from "@huggingface/transformers";
import { rejectPadding, sliceColumns, type StreamingDecoder } from "./streaming_forward.js";
import { streamOf } from "./stream_registry.js";

/** First step of a turn: binds the cache and decides what to feed. */
export function prepareTurnInputs(decoder: StreamingDecoder, modelInputs: Record<string, unknown>): Record<string, unknown> {
  const cache = (modelInputs.past_key_values as DynamicCache | null | undefined) ?? new DynamicCache();
  modelInputs.past_key_values = cache;
  const { transcript } = decoder.stream(cache);
  const inputIds = modelInputs.input_ids as Tensor;
  const [batch, length] = inputIds.dims;
  const data = inputIds.data as BigInt64Array;
  const mask = modelInputs.attention_mask as Tensor | null | undefined;
  if (mask) rejectPadding(mask, batch, length);
  const streamed = transcript.streamedPrefix(data, batch, length);
  const pending = transcript.takePending();
  if (streamed > 0) {
    modelInputs.input_ids = new Tensor("int64", sliceColumns(data, batch, length, streamed, length - streamed), [batch, length - streamed]);
  } else if (pending) {
    const joined = new BigInt64Array(batch * (length + 1));
    for (let b = 0; b < batch; b++) {
      joined[b * (length + 1)] = pending[b];
      joined.set(data.subarray(b * length, (b + 1) * length), b * (length + 1) + 1);
    }
    modelInputs.input_ids = new Tensor("int64", joined, [batch, length + 1]);
  }
  modelInputs.attention_mask = null;
  modelInputs.num_logits_to_keep = 1; // generation samples from the last position only
  return modelInputs;
}

/** Later steps: only the sampled tokens; the cache object carries the rest. */
export function nextStepInputs(modelInputs: Record<string, unknown>, generated: bigint[][]): Record<string, unknown> {
  modelInputs.input_ids = new Tensor("int64", BigInt64Array.from(generated.flat()), [generated.length, 1]);
  modelInputs.attention_mask = null;
  modelInputs.position_ids = null;
  return modelInputs;
}

/** After generate(): remembers the final sampled tokens, so the next turn on this cache feeds them first. */
export function finishTurn(cache: DynamicCache | null | undefined, sequences: Tensor): void {
  const stream = cache ? streamOf(cache) : undefined;
  if (!stream) return;
  const [batch, length] = sequences.dims;
  const data = sequences.data as BigInt64Array;
  stream.transcript.setPending(BigInt64Array.from({ length: batch }, (_, b) => data[b * length + length - 1]));
}

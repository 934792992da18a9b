/**
 * Turns a loaded transformers.js decoder into a streaming one, in place (as the Python package swaps the
 * forward of each model family): `forward`, `generate` and calling the model all stream.
 */
import { Tensor, type DynamicCache, type PreTrainedModel } from "@huggingface/transformers";
import type { AttentionSinkOptions } from "../cache/options.js";
import type { AttentionSinkSettings } from "../cache/streaming_policy.js";
import type { ModelConfig } from "../positions/families.js";
import { decoderSession } from "./decoder_contract.js";
import { finishTurn, nextStepInputs, prepareTurnInputs } from "./generation_hooks.js";
import { StreamingDecoder, type StreamingForwardInputs, type StreamingForwardOutput } from "./streaming_forward.js";

/** The model surface this package adds or changes: calling the model is its forward pass. */
export interface AttentionSinkModel {
  (inputs: StreamingForwardInputs): Promise<StreamingForwardOutput>;
  readonly attention_sinks: AttentionSinkSettings;
  forward(inputs: StreamingForwardInputs): Promise<StreamingForwardOutput>;
}

const decoders = new WeakMap<object, StreamingDecoder>();

/** The streaming decoder behind a model enableAttentionSinks() turned, for saving and restoring its streams. */
export function streamingDecoderOf(model: AttentionSinkModel): StreamingDecoder {
  const decoder = decoders.get(model);
  if (!decoder) throw new TypeError("the model was not turned by enableAttentionSinks()");
  return decoder;
}

/**
 * A transformers.js model with attention sinks. The streaming signatures come first, so TypeScript picks them
 * over transformers.js's `Promise<any>` ones, and the model stays assignable to the transformers.js class.
 */
export type WithAttentionSinks<M extends PreTrainedModel> = AttentionSinkModel & M;

export function enableAttentionSinks<M extends PreTrainedModel>(model: M, options: AttentionSinkOptions = {}): WithAttentionSinks<M> {
  const decoder = new StreamingDecoder(decoderSession(model), model.config as unknown as ModelConfig, options);
  decoders.set(model, decoder);
  const target = model as unknown as Record<string, unknown>;
  Object.defineProperty(target, "attention_sinks", { value: decoder.settings, enumerable: false });
  target.forward = (inputs: StreamingForwardInputs) => decoder.forward(inputs);
  target.prepare_inputs_for_generation = (_ids: bigint[][], modelInputs: Record<string, unknown>) => prepareTurnInputs(decoder, modelInputs);
  const generate = model.generate.bind(model);
  target.generate = async (params: Parameters<M["generate"]>[0]) => {
    const result = await generate(params);
    const sequences = result instanceof Tensor ? result : (result as { sequences: Tensor }).sequences;
    finishTurn((params as { past_key_values?: DynamicCache | null }).past_key_values, sequences);
    return result;
  };
  target._update_model_kwargs_for_generation = ({ generated_input_ids, model_inputs }: { generated_input_ids: bigint[][]; model_inputs: Record<string, unknown> }) =>
    nextStepInputs(model_inputs, generated_input_ids);
  return model as unknown as WithAttentionSinks<M>;
}

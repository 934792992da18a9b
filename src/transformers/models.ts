/**
 * Drop-in replacements for the transformers.js entry points that load decoders: the same names, the same
 * options, plus `attention_sink_size` and `attention_sink_window_size`.
 */
import * as transformers from "@huggingface/transformers";
import type { PipelineType, PreTrainedModel, PretrainedModelOptions } from "@huggingface/transformers";
import { splitSinkOptions, type AttentionSinkOptions } from "../cache/options.js";
import { enableAttentionSinks, type WithAttentionSinks } from "./enable.js";
import { modelPlatform } from "./model_platform.js";
import type { ModelConfig } from "../positions/families.js";
import { streamTextGenerationPipeline } from "./text_generation_pipeline.js";

/** transformers.js loading options plus the attention-sink options. */
export type StreamingModelOptions = PretrainedModelOptions & AttentionSinkOptions;

/** A loaded streaming decoder: the transformers.js model, streaming. */
export type StreamingModel = WithAttentionSinks<PreTrainedModel>;

interface PretrainedLoader {
  from_pretrained(id: string, options?: PretrainedModelOptions): Promise<PreTrainedModel>;
}

/** A loader class whose `from_pretrained` returns the transformers.js model with attention sinks enabled. */
function streamingLoader<B extends PretrainedLoader>(Base: B) {
  return class {
    static async from_pretrained(id: string, options?: StreamingModelOptions): Promise<StreamingModel> {
      const { sink, rest } = splitSinkOptions(options);
      // A checkpoint converted on first use gets the file of the dtype asked (per session: the decoder's).
      const dtype = typeof rest.dtype === "string" ? rest.dtype : rest.dtype?.model;
      const platform = modelPlatform();
      const { path, files } = await platform.source(id, { dtype });
      const model = enableAttentionSinks(await platform.loading(path, () => Base.from_pretrained(path, { ...files, ...rest })), sink);
      await platform.checkGraph(path, dtype, model.config as unknown as ModelConfig, model.attention_sinks);
      return model;
    }
    /** Models loaded through this class are instances of the transformers.js class. */
    static [Symbol.hasInstance](value: unknown): boolean {
      return value instanceof (Base as unknown as new () => unknown);
    }
  };
}

export const AutoModelForCausalLM = streamingLoader(transformers.AutoModelForCausalLM);
export const LlamaForCausalLM = streamingLoader(transformers.LlamaForCausalLM);
export const MistralForCausalLM = streamingLoader(transformers.MistralForCausalLM);
export const Qwen2ForCausalLM = streamingLoader(transformers.Qwen2ForCausalLM);
export const Qwen3ForCausalLM = streamingLoader(transformers.Qwen3ForCausalLM);
export const GemmaForCausalLM = streamingLoader(transformers.GemmaForCausalLM);
export const Gemma2ForCausalLM = streamingLoader(transformers.Gemma2ForCausalLM);
export const OlmoForCausalLM = streamingLoader(transformers.OlmoForCausalLM);
export const Olmo2ForCausalLM = streamingLoader(transformers.Olmo2ForCausalLM);
export const GraniteForCausalLM = streamingLoader(transformers.GraniteForCausalLM);
export const Starcoder2ForCausalLM = streamingLoader(transformers.Starcoder2ForCausalLM);
export const StableLmForCausalLM = streamingLoader(transformers.StableLmForCausalLM);
export const PhiForCausalLM = streamingLoader(transformers.PhiForCausalLM);
export const Phi3ForCausalLM = streamingLoader(transformers.Phi3ForCausalLM);
export const GPTNeoXForCausalLM = streamingLoader(transformers.GPTNeoXForCausalLM);
export const ExaoneForCausalLM = streamingLoader(transformers.ExaoneForCausalLM);
export const GPTJForCausalLM = streamingLoader(transformers.GPTJForCausalLM);
export const CodeGenForCausalLM = streamingLoader(transformers.CodeGenForCausalLM);
export const CohereForCausalLM = streamingLoader(transformers.CohereForCausalLM);
export const FalconForCausalLM = streamingLoader(transformers.FalconForCausalLM);
export const BloomForCausalLM = streamingLoader(transformers.BloomForCausalLM);
export const MptForCausalLM = streamingLoader(transformers.MptForCausalLM);
export const GPT2LMHeadModel = streamingLoader(transformers.GPT2LMHeadModel);
export const GPTNeoForCausalLM = streamingLoader(transformers.GPTNeoForCausalLM);
export const OPTForCausalLM = streamingLoader(transformers.OPTForCausalLM);

/** transformers.js `AutoTokenizer`, accepting the same model sources as the model loaders. */
export class AutoTokenizer {
  static async from_pretrained(
    id: string,
    options?: Parameters<typeof transformers.AutoTokenizer.from_pretrained>[1],
  ): ReturnType<typeof transformers.AutoTokenizer.from_pretrained> {
    const platform = modelPlatform();
    const { path, files } = await platform.source(id);
    platform.checkTokenizer(path, files);
    return platform.loading(path, () => transformers.AutoTokenizer.from_pretrained(path, { ...files, ...options }));
  }
}

/**
 * transformers.js `pipeline`, with attention sinks on its model for `text-generation` (defaults 4 + 1020,
 * or the `attention_sink_*` options given); prompts of unequal length run one at a time.
 */
export async function pipeline<T extends PipelineType>(
  task: T,
  model?: string,
  options?: StreamingModelOptions,
): ReturnType<typeof transformers.pipeline<T>> {
  const { sink, rest } = splitSinkOptions(options);
  if (task !== "text-generation") return transformers.pipeline(task, model, rest);
  const platform = modelPlatform();
  const source = model === undefined ? undefined : (await platform.source(model)).path;
  const pipe = await (source === undefined ? transformers.pipeline(task, source, rest) : platform.loading(source, () => transformers.pipeline(task, source, rest)));
  enableAttentionSinks((pipe as unknown as { model: PreTrainedModel }).model, sink);
  streamTextGenerationPipeline(pipe as unknown as Parameters<typeof streamTextGenerationPipeline>[0]);
  return pipe;
}

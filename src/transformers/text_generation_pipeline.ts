/**
 * transformers.js's `text-generation` pipeline on a sink cache, made to take what a pipeline user passes
 * without knowing about the cache: several prompts of unequal length (a padded batch, which the cache refuses)
 * run one at a time, and chat messages for a model without a chat template use the plain `User:` /
 * `Assistant:` format, as the CLI's chat does.
 */
import type { PreTrainedTokenizer } from "@huggingface/transformers";
import type { ChatMessage } from "../backend/backend.js";
import { plainTranscript } from "../generation/chat.js";

type Conversation = ChatMessage[];
type PipelineInput = string | string[] | Conversation | Conversation[];
type PipelineCall = (texts: PipelineInput, options?: Record<string, unknown>) => Promise<unknown>;

interface TextGenerationPipeline {
  tokenizer: PreTrainedTokenizer;
  _call: PipelineCall;
}

function isConversation(value: unknown): value is Conversation {
  return Array.isArray(value) && value.every((message) => typeof message === "object" && message !== null && "role" in message && "content" in message);
}

/** Rows of a batched input (several strings or several conversations), else null. */
function batchRows(texts: PipelineInput): (string | Conversation)[] | null {
  if (!Array.isArray(texts) || isConversation(texts)) return null;
  return texts as (string | Conversation)[];
}

export function streamTextGenerationPipeline(pipe: TextGenerationPipeline): void {
  const call = pipe._call.bind(pipe);
  const one = async (text: string | Conversation, options: Record<string, unknown>): Promise<unknown> => {
    if (!isConversation(text) || pipe.tokenizer.chat_template || options.chat_template !== undefined) return call(text, options);
    // No template: the plain format, returned as a chat pipeline returns a conversation.
    const outputs = (await call(plainTranscript(text), { ...options, return_full_text: false })) as { generated_text: string }[];
    return outputs.map(({ generated_text }) => ({ generated_text: [...text, { role: "assistant", content: generated_text.trim() }] }));
  };
  pipe._call = async (texts, options = {}) => {
    const rows = batchRows(texts);
    if (rows === null) return one(texts as string | Conversation, options);
    const results: unknown[] = [];
    for (const row of rows) results.push(await one(row, options));
    return results;
  };
}

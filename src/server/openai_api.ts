/**
 * The OpenAI API as this server speaks it: request bodies checked field by field (a bad one is a 400 naming
 * the field), and the response, streaming-chunk and error objects in OpenAI's shapes, so OpenAI's own
 * clients work unchanged.
 */
import type { ChatMessage } from "../backend/backend.js";
import type { StopReason } from "../generation/session.js";

/** An error as OpenAI sends it: an HTTP status and `{ error: { message, type, param, code } }`. */
export class ApiError extends Error {
  override name = "ApiError";

  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Extra response headers (Retry-After for a busy server). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** A request field with a wrong value: 400, naming it. */
export function invalidField(param: string, message: string): ApiError {
  return new ApiError(400, `${param}: ${message}`, "invalid_request_error", param, "invalid_value");
}

/** What a generation request asks, checked; absent sampling fields fall back to the server's defaults. */
export interface GenerationRequest {
  model: string;
  max_tokens: number | undefined;
  temperature: number | undefined;
  top_p: number | undefined;
  stop: string[];
  seed: number | undefined;
  stream: boolean;
  include_usage: boolean;
  session_id: string | undefined;
}

export interface ChatRequest extends GenerationRequest {
  messages: ChatMessage[];
}

export interface CompletionRequest extends GenerationRequest {
  prompt: string;
}

const ROLES = ["system", "developer", "user", "assistant"] as const;
/** OpenAI's limit on stop sequences. */
const MAX_STOP_SEQUENCES = 4;
/** Session ids name a conversation; the store hashes them, but control characters or a novel are refused. */
const MAX_SESSION_ID_LENGTH = 256;

type Body = Record<string, unknown>;

function asBody(value: unknown): Body {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ApiError(400, "the request body must be a JSON object", "invalid_request_error", null, "invalid_body");
  }
  return value as Body;
}

function optionalNumber(body: Body, name: string, check: (value: number) => boolean, expected: string): number | undefined {
  const value = body[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "number" || !Number.isFinite(value) || !check(value)) throw invalidField(name, `must be ${expected}, got ${JSON.stringify(value)}`);
  return value;
}

function optionalBoolean(body: Body, name: string): boolean {
  const value = body[name];
  if (value === undefined || value === null) return false;
  if (typeof value !== "boolean") throw invalidField(name, `must be true or false, got ${JSON.stringify(value)}`);
  return value;
}

/** The session id of a request: the X-Session-Id header or the body's session_id (the same one if both). */
function sessionId(body: Body, header: string | undefined): string | undefined {
  const field = body.session_id;
  if (field !== undefined && field !== null && typeof field !== "string") throw invalidField("session_id", `must be a string, got ${JSON.stringify(field)}`);
  const id = header ?? (field as string | undefined);
  if (header !== undefined && typeof field === "string" && field !== header) {
    throw invalidField("session_id", `the body names session ${JSON.stringify(field)} and the X-Session-Id header ${JSON.stringify(header)}: give one`);
  }
  if (id === undefined) return undefined;
  if (id.length === 0 || id.length > MAX_SESSION_ID_LENGTH || /[\u0000-\u001f\u007f]/.test(id)) {
    throw invalidField("session_id", `must be 1 to ${MAX_SESSION_ID_LENGTH} characters without control characters`);
  }
  return id;
}

function generationFields(body: Body, header: string | undefined, max_tokens_limit: number): GenerationRequest {
  if (typeof body.model !== "string" || body.model === "") throw invalidField("model", "must be a non-empty string (GET /v1/models lists the model served)");
  optionalNumber(body, "n", (value) => value === 1, "1 (one choice per request)");
  const max_tokens_name = body.max_completion_tokens !== undefined && body.max_tokens === undefined ? "max_completion_tokens" : "max_tokens";
  const max_tokens = optionalNumber(
    body,
    max_tokens_name,
    (value) => Number.isInteger(value) && value >= 1 && value <= max_tokens_limit,
    `an integer from 1 to ${max_tokens_limit} (this server's limit)`,
  );
  const temperature = optionalNumber(body, "temperature", (value) => value >= 0 && value <= 2, "a number from 0 to 2");
  const top_p = optionalNumber(body, "top_p", (value) => value > 0 && value <= 1, "a number in (0, 1]");
  const seed = optionalNumber(body, "seed", (value) => Number.isSafeInteger(value), "an integer");
  let stop: string[] = [];
  if (typeof body.stop === "string") stop = [body.stop];
  else if (Array.isArray(body.stop)) stop = body.stop as string[];
  else if (body.stop !== undefined && body.stop !== null) throw invalidField("stop", "must be a string or an array of strings");
  if (stop.length > MAX_STOP_SEQUENCES || !stop.every((item) => typeof item === "string" && item.length > 0)) {
    throw invalidField("stop", `must hold at most ${MAX_STOP_SEQUENCES} non-empty strings`);
  }
  const options = body.stream_options;
  if (options !== undefined && options !== null && (typeof options !== "object" || Array.isArray(options))) throw invalidField("stream_options", "must be an object");
  const include_usage = options ? optionalBoolean(options as Body, "include_usage") : false;
  return {
    model: body.model,
    max_tokens,
    temperature,
    top_p,
    stop,
    seed,
    stream: optionalBoolean(body, "stream"),
    include_usage,
    session_id: sessionId(body, header),
  };
}

/** The text of a message's content: a string, or an array of text parts. */
function messageText(content: unknown, param: string): string {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((part: unknown, i) => {
        const { type, text } = (part ?? {}) as { type?: unknown; text?: unknown };
        if (type !== "text" || typeof text !== "string") throw invalidField(`${param}[${i}]`, 'only text parts ({"type": "text", "text": "..."}) are supported');
        return text;
      })
      .join("");
  }
  throw invalidField(param, "must be a string or an array of text parts");
}

export function parseChatRequest(value: unknown, sessionHeader: string | undefined, max_tokens_limit: number): ChatRequest {
  const body = asBody(value);
  const fields = generationFields(body, sessionHeader, max_tokens_limit);
  if (!Array.isArray(body.messages) || body.messages.length === 0) throw invalidField("messages", "must be a non-empty array of messages");
  const messages = body.messages.map((message: unknown, i): ChatMessage => {
    const { role, content } = (message ?? {}) as { role?: unknown; content?: unknown };
    if (typeof role !== "string" || !(ROLES as readonly string[]).includes(role)) {
      throw invalidField(`messages[${i}].role`, `must be one of ${ROLES.join(", ")}, got ${JSON.stringify(role)}`);
    }
    return { role: role === "developer" ? "system" : role, content: messageText(content, `messages[${i}].content`) };
  });
  return { ...fields, messages };
}

export function parseCompletionRequest(value: unknown, sessionHeader: string | undefined, max_tokens_limit: number): CompletionRequest {
  const body = asBody(value);
  const fields = generationFields(body, sessionHeader, max_tokens_limit);
  let prompt = body.prompt;
  if (Array.isArray(prompt) && prompt.length === 1) prompt = prompt[0];
  if (typeof prompt !== "string" || prompt === "") throw invalidField("prompt", "must be a non-empty string (one prompt per request)");
  return { ...fields, prompt };
}

export type FinishReason = "stop" | "length";

export function finishReason(stopped: StopReason): FinishReason {
  return stopped === "max_new_tokens" ? "length" : "stop";
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usage(prompt_tokens: number, completion_tokens: number): Usage {
  return { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens };
}

/** Identifies one response, as OpenAI's `id` and `created` do. */
export interface ResponseHeader {
  id: string;
  created: number;
  model: string;
}

export function chatCompletion(header: ResponseHeader, content: string, finish: FinishReason, used: Usage, extra: object) {
  return {
    ...header,
    object: "chat.completion",
    choices: [{ index: 0, message: { role: "assistant", content, refusal: null }, logprobs: null, finish_reason: finish }],
    usage: used,
    ...extra,
  };
}

export function chatChunk(header: ResponseHeader, delta: { role?: "assistant"; content?: string }, finish: FinishReason | null) {
  return { ...header, object: "chat.completion.chunk", choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] };
}

/** The chunk after the last choice when the client asked `stream_options.include_usage`. */
export function usageChunk(header: ResponseHeader, object: "chat.completion.chunk" | "text_completion", used: Usage, extra: object) {
  return { ...header, object, choices: [], usage: used, ...extra };
}

export function textCompletion(header: ResponseHeader, text: string, finish: FinishReason | null, used: Usage | null, extra: object) {
  return {
    ...header,
    object: "text_completion",
    choices: [{ index: 0, text, logprobs: null, finish_reason: finish }],
    ...(used === null ? {} : { usage: used }),
    ...extra,
  };
}

export function modelList(model: string, created: number) {
  return { object: "list", data: [{ id: model, object: "model", created, owned_by: "attention-sinks" }] };
}

/**
 * The HTTP side of `attention-sinks serve`: routing, the API key, bounded request bodies, JSON and
 * server-sent-event responses in OpenAI's shapes. Generation is the model service's; a client that goes away
 * aborts its request there.
 */
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { ModelService, TurnOutcome } from "./model_service.js";
import {
  ApiError,
  chatChunk,
  chatCompletion,
  modelList,
  parseChatRequest,
  parseCompletionRequest,
  textCompletion,
  usageChunk,
  type GenerationRequest,
  type ResponseHeader,
} from "./openai_api.js";

export interface ApiServerOptions {
  /** Every request must carry `Authorization: Bearer <api_key>` (none: no key needed). */
  api_key?: string;
  max_body_bytes: number;
  /** Receives errors the server did not expect (a 500 was answered). */
  log: (message: string) => void;
}

const SESSION_HEADER = "x-session-id";

export function createApiServer(service: ModelService, options: ApiServerOptions): Server {
  const created = Math.floor(Date.now() / 1000);
  const keyDigest = options.api_key === undefined ? null : digest(options.api_key);
  return createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      const apiError = error instanceof ApiError ? error : new ApiError(500, "the server failed to answer: see its log", "server_error");
      if (!(error instanceof ApiError)) options.log(`${request.method} ${request.url}: ${(error as Error).stack ?? String(error)}`);
      if (!response.headersSent) sendJson(response, apiError.status, apiError.body(), apiError.headers);
      else if (!response.writableEnded) {
        // Mid-stream: the status is gone, so the error goes as an event, as OpenAI sends it.
        response.end(`data: ${JSON.stringify(apiError.body())}\n\n`);
      }
      if (apiError.status === 413) response.once("finish", () => request.destroy());
    });
  });

  async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    if (keyDigest !== null) checkKey(request.headers.authorization, keyDigest);
    const path = new URL(request.url ?? "/", "http://localhost").pathname.replace(/\/+$/, "");
    const route = `${request.method} ${path}`;
    if (route === "GET /v1/models") return sendJson(response, 200, modelList(service.model, created));
    if (request.method === "GET" && path.startsWith("/v1/models/")) {
      const [model] = modelList(service.model, created).data;
      if (decodeURIComponent(path.slice("/v1/models/".length)) !== model.id) {
        throw new ApiError(404, `no model ${path.slice("/v1/models/".length)}: this server serves ${model.id}`, "invalid_request_error", "model", "model_not_found");
      }
      return sendJson(response, 200, model);
    }
    if (route === "POST /v1/chat/completions" || route === "POST /v1/completions") {
      const body = await readJson(request, options.max_body_bytes);
      const header = request.headers[SESSION_HEADER];
      const sessionHeader = Array.isArray(header) ? header[0] : header;
      const aborted = new AbortController();
      response.on("close", () => {
        if (!response.writableFinished) aborted.abort(new Error("the client went away"));
      });
      if (route === "POST /v1/chat/completions") await chat(parseChatRequest(body, sessionHeader, service.max_tokens), response, aborted.signal);
      else await complete(parseCompletionRequest(body, sessionHeader, service.max_tokens), response, aborted.signal);
      return;
    }
    if (["/v1/models", "/v1/chat/completions", "/v1/completions"].includes(path)) {
      throw new ApiError(405, `${request.method} is not allowed on ${path}`, "invalid_request_error", null, "method_not_allowed");
    }
    throw new ApiError(404, `no route ${request.method} ${path}: this server answers GET /v1/models, POST /v1/chat/completions and POST /v1/completions`, "invalid_request_error", null, "not_found");
  }

  async function chat(request: ReturnType<typeof parseChatRequest>, response: ServerResponse, signal: AbortSignal): Promise<void> {
    const header = responseHeader("chatcmpl", request);
    if (!request.stream) {
      const outcome = await service.chat(request, { signal });
      return sendJson(response, 200, chatCompletion(header, outcome.text, outcome.finish_reason, outcome.usage, extra(outcome)));
    }
    const events = new EventStream(response);
    const outcome = await service.chat(request, {
      signal,
      onText: (content) => {
        if (!events.started) events.send(chatChunk(header, { role: "assistant", content: "" }, null));
        events.send(chatChunk(header, { content }, null));
      },
    });
    if (!events.started) events.send(chatChunk(header, { role: "assistant", content: "" }, null));
    events.send({ ...chatChunk(header, {}, outcome.finish_reason), ...(request.include_usage ? {} : extra(outcome)) });
    if (request.include_usage) events.send(usageChunk(header, "chat.completion.chunk", outcome.usage, extra(outcome)));
    events.done();
  }

  async function complete(request: ReturnType<typeof parseCompletionRequest>, response: ServerResponse, signal: AbortSignal): Promise<void> {
    const header = responseHeader("cmpl", request);
    if (!request.stream) {
      const outcome = await service.complete(request, { signal });
      return sendJson(response, 200, textCompletion(header, outcome.text, outcome.finish_reason, outcome.usage, extra(outcome)));
    }
    const events = new EventStream(response);
    const outcome = await service.complete(request, { signal, onText: (text) => events.send(textCompletion(header, text, null, null, {})) });
    events.send(textCompletion(header, "", outcome.finish_reason, request.include_usage ? null : outcome.usage, request.include_usage ? {} : extra(outcome)));
    if (request.include_usage) events.send(usageChunk(header, "text_completion", outcome.usage, extra(outcome)));
    events.done();
  }

  function responseHeader(prefix: string, request: GenerationRequest): ResponseHeader {
    return { id: `${prefix}-${randomUUID()}`, created: Math.floor(Date.now() / 1000), model: request.model };
  }
}

/** The session's counters beside OpenAI's fields (clients ignore fields they do not know). */
function extra(outcome: TurnOutcome): object {
  return outcome.session === null ? {} : { session: outcome.session };
}

function digest(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

function checkKey(authorization: string | undefined, keyDigest: Buffer): void {
  const given = /^Bearer (.+)$/.exec(authorization ?? "")?.[1];
  // Compared as digests, in constant time, so the comparison says nothing of the key's length or prefix.
  if (given === undefined || !timingSafeEqual(digest(given), keyDigest)) {
    const message = given === undefined ? "no API key: send it as the header Authorization: Bearer KEY" : "the API key is not this server's";
    throw new ApiError(401, message, "invalid_request_error", null, "invalid_api_key");
  }
}

async function readJson(request: IncomingMessage, limit: number): Promise<unknown> {
  const tooLarge = () =>
    new ApiError(413, `the request body is larger than this server's limit of ${limit} bytes`, "invalid_request_error", null, "request_too_large", { Connection: "close" });
  if (Number(request.headers["content-length"] ?? 0) > limit) throw tooLarge();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw tooLarge();
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ApiError(400, `the request body is not valid JSON: ${(error as Error).message}`, "invalid_request_error", null, "invalid_json");
  }
}

function sendJson(response: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
  if (response.destroyed) return;
  const text = JSON.stringify(body);
  response.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text), ...headers });
  response.end(text);
}

/** Server-sent events; the headers go with the first event, so an error before it still gets its status. */
class EventStream {
  started = false;

  constructor(private readonly response: ServerResponse) {}

  send(event: object): void {
    if (this.response.destroyed) return; // the client went away; its turn was stopped and saved
    if (!this.started) {
      this.response.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache", Connection: "keep-alive" });
      this.started = true;
    }
    this.response.write(`data: ${JSON.stringify(event)}\n\n`);
  }

  done(): void {
    if (!this.response.destroyed) this.response.end("data: [DONE]\n\n");
  }
}

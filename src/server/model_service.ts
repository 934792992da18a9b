/**
 * What the server does with one model: each request waits its turn in the model's fair queue, then its
 * session's saved stream is restored onto the backend, the turn is generated, and the new state is saved to
 * the store before the reply completes (so what a client was answered survives a crash). Stateless requests
 * start from an empty stream and save nothing. Sessions in memory are only a cache of the store: at most
 * `max_sessions`, each dropped after `idle_seconds` unused; with a shared store (Redis) every turn reads the
 * store, since another process may have continued the session.
 */
import { random } from "@huggingface/transformers";
import type { ChatMessage, StreamingBackend } from "../backend/backend.js";
import { StateRecordError } from "../backend/state_record.js";
import type { SinkCacheStats } from "../cache/sink_cache.js";
import { Chat } from "../generation/chat.js";
import type { SamplingOptions } from "../generation/decoding.js";
import { GenerationSession, type TurnOptions, type TurnResult } from "../generation/session.js";
import { FairQueue } from "./fair_queue.js";
import { ApiError, finishReason, invalidField, usage, type ChatRequest, type CompletionRequest, type FinishReason, type GenerationRequest, type Usage } from "./openai_api.js";
import { decodeSessionState, EMPTY_DIGEST, encodeSessionState, extendDigest, type SessionState } from "./session_state.js";
import type { SessionStore } from "./session_store.js";

export interface ModelServiceOptions {
  /** The model's name in the API. */
  model: string;
  /** Names the model and its cache settings in saved sessions: a session saved under another is reset. */
  state_signature: string;
  /** The most tokens one reply may have, and the default when a request gives no max_tokens. */
  max_tokens: number;
  /** Sampling when a request names none (`temperature` 0 in a request means greedy decoding). */
  sampling: SamplingOptions;
  /** Requests that may wait for the model; more get 429. */
  max_queue: number;
  /** Sessions kept in memory (they are in the store too). */
  max_sessions: number;
  idle_seconds: number;
  /** Receives warnings (a saved session that could not be read). */
  warn: (message: string) => void;
}

export interface SessionInfo {
  id: string;
  seen_tokens: number;
  cached_tokens: number;
  kv_cache_bytes: number;
  /** Bytes of the saved state. */
  state_bytes: number;
}

export interface TurnOutcome {
  text: string;
  finish_reason: FinishReason;
  usage: Usage;
  /** Null for a stateless request. */
  session: SessionInfo | null;
}

export interface TurnEvents {
  onText?: (text: string) => void;
  /** Aborted when the client goes away: a waiting request is dropped, a running one stops after its token. */
  signal: AbortSignal;
}

/** A server that is stopping answers what still waits with 503. */
const STOPPING = () => new ApiError(503, "the server is shutting down: retry on another", "server_error", null, "server_shutting_down");

export class ModelService {
  private readonly queue: FairQueue;
  private readonly session: GenerationSession;
  /** Saved states of recent sessions, least recently used first. */
  private readonly memory = new Map<string, { state: Uint8Array; used: number }>();
  private readonly sweeper: NodeJS.Timeout;
  private stopping = false;
  private statelessCount = 0;

  constructor(
    backend: StreamingBackend,
    private readonly store: SessionStore,
    private readonly options: ModelServiceOptions,
  ) {
    this.queue = new FairQueue(options.max_queue);
    this.session = new GenerationSession(backend);
    this.sweeper = setInterval(() => this.dropIdle(), Math.min(60_000, Math.max(1000, (options.idle_seconds * 1000) / 2))).unref();
  }

  get model(): string {
    return this.options.model;
  }

  /** The most tokens a reply may have. */
  get max_tokens(): number {
    return this.options.max_tokens;
  }

  /** Sessions held in memory now. */
  get sessions_in_memory(): number {
    return this.memory.size;
  }

  /** The stream's counters, for the last turn run. */
  stats(): SinkCacheStats {
    return this.session.stats();
  }

  chat(request: ChatRequest, events: TurnEvents): Promise<TurnOutcome> {
    return this.enqueue(request, events, async (state) => {
      const fresh = state.chat === null && state.messages_seen === 0;
      const known = fresh ? [] : request.messages.slice(0, state.messages_seen);
      const resent = !fresh && request.messages.length > state.messages_seen && extendDigest(EMPTY_DIGEST, known) === state.messages_digest;
      const messages = fresh ? request.messages : resent ? request.messages.slice(state.messages_seen) : afterLastReply(request.messages);
      if (messages.length === 0) throw invalidField("messages", "the conversation ends with an assistant message: there is nothing new to reply to");
      const chat = new Chat(this.session, state.chat);
      let text = "";
      const result = await chat.sendMessages(messages, this.turnOptions(request, events, (piece) => (text += piece), true));
      state.chat = chat.state;
      const reply: ChatMessage = { role: "assistant", content: text };
      state.messages_digest = extendDigest(state.messages_digest, [...messages, reply]);
      state.messages_seen += messages.length + 1;
      return { text, result };
    });
  }

  complete(request: CompletionRequest, events: TurnEvents): Promise<TurnOutcome> {
    return this.enqueue(request, events, async () => {
      const first = this.session.stats().seen_tokens === 0;
      const ids = this.session.tokenizer.encode(request.prompt, { add_special_tokens: first });
      let text = "";
      const result = await this.session.generate(ids, this.turnOptions(request, events, (piece) => (text += piece), false));
      return { text, result };
    });
  }

  /** Stops: waiting requests get 503, the running one stops after its token and is saved; then the store closes. */
  async close(): Promise<void> {
    this.stopping = true;
    clearInterval(this.sweeper);
    this.queue.drain(STOPPING());
    this.session.interrupt();
    await this.queue.idle();
    await this.store.close();
  }

  /** `reply`: a chat reply, which starts at its first visible character; a completion is the raw continuation. */
  private turnOptions(request: GenerationRequest, events: TurnEvents, collect: (text: string) => void, reply: boolean): TurnOptions {
    const { sampling } = this.options;
    let started = !reply;
    const do_sample = request.temperature === undefined ? sampling.do_sample : request.temperature > 0;
    return {
      ...sampling,
      do_sample,
      ...(request.temperature ? { temperature: request.temperature } : {}),
      ...(request.top_p === undefined ? {} : { top_p: request.top_p }),
      max_new_tokens: request.max_tokens ?? this.options.max_tokens,
      stop_strings: request.stop,
      onText: (piece) => {
        // "Assistant:" and many templates leave a space before the reply.
        if (!started) piece = piece.trimStart();
        if (piece === "") return;
        started = true;
        collect(piece);
        events.onText?.(piece);
      },
    };
  }

  private enqueue(
    request: GenerationRequest,
    events: TurnEvents,
    turn: (state: SessionState) => Promise<{ text: string; result: TurnResult }>,
  ): Promise<TurnOutcome> {
    if (this.stopping) return Promise.reject(STOPPING());
    const id = request.session_id;
    const lane = id === undefined ? `stateless ${this.statelessCount++}` : `session ${id}`;
    return this.queue.submit(
      lane,
      async () => {
        if (this.stopping) throw STOPPING();
        const state = id === undefined ? this.emptyState() : await this.open(id);
        events.signal.throwIfAborted();
        const stop = () => this.session.interrupt();
        events.signal.addEventListener("abort", stop, { once: true });
        let outcome: { text: string; result: TurnResult };
        try {
          if (request.seed !== undefined) random.seed(request.seed);
          outcome = await turn(state);
        } finally {
          events.signal.removeEventListener("abort", stop);
        }
        const { text, result } = outcome;
        const stats = this.session.stats();
        let session: SessionInfo | null = null;
        if (id !== undefined) {
          Object.assign(state, this.session.save());
          const saved = encodeSessionState(state);
          await this.store.save(id, saved);
          this.remember(id, saved);
          session = { id, seen_tokens: stats.seen_tokens, cached_tokens: stats.cached_tokens, kv_cache_bytes: stats.kv_cache_bytes, state_bytes: saved.byteLength };
        }
        return { text, finish_reason: finishReason(result.stopped), usage: usage(result.prompt_tokens, result.new_tokens), session };
      },
      events.signal,
    );
  }

  private emptyState(): SessionState {
    this.session.reset();
    return { model: this.options.state_signature, stream: new Uint8Array(0), pending_token: null, chat: null, messages_seen: 0, messages_digest: EMPTY_DIGEST };
  }

  /** A session's state restored onto the backend; a new session, or one whose saved state is unreadable, starts empty. */
  private async open(id: string): Promise<SessionState> {
    const cached = this.store.shared ? undefined : this.memory.get(id);
    const saved = cached?.state ?? (await this.store.load(id));
    if (saved === null) return this.emptyState();
    try {
      const state = decodeSessionState(saved, this.options.state_signature);
      this.session.restore(state);
      return state;
    } catch (error) {
      if (!(error instanceof StateRecordError)) throw error;
      this.options.warn(`session ${JSON.stringify(id)}: its saved state in ${this.store.location} cannot be used (${error.message}); starting it anew`);
      return this.emptyState();
    }
  }

  private remember(id: string, state: Uint8Array): void {
    if (this.store.shared) return;
    this.memory.delete(id);
    this.memory.set(id, { state, used: Date.now() });
    for (const oldest of this.memory.keys()) {
      if (this.memory.size <= this.options.max_sessions) break;
      this.memory.delete(oldest);
    }
  }

  private dropIdle(): void {
    const limit = Date.now() - this.options.idle_seconds * 1000;
    for (const [id, { used }] of this.memory) if (used < limit) this.memory.delete(id);
  }
}

/** The messages after the conversation's last reply: what is new when the transcript sent is not the one saved. */
function afterLastReply(messages: readonly ChatMessage[]): ChatMessage[] {
  let last = messages.length - 1;
  while (last >= 0 && messages[last].role !== "assistant") last--;
  return messages.slice(last + 1);
}

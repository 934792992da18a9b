/**
 * A chat session's saved state: the stream (its KV of sink + window and bookkeeping, from the backend), the
 * token generated last and not yet fed, the last exchange (all the chat template needs for the next turn)
 * and a digest of the messages so far, by which a re-sent transcript is recognised. Its size does not grow
 * with the conversation: the stream's record is constant once the cache is full, and only one exchange is kept.
 */
import { createHash } from "node:crypto";
import type { ChatMessage } from "../backend/backend.js";
import { decodeStateRecord, encodeStateRecord, StateRecordError } from "../backend/state_record.js";
import type { ChatState } from "../generation/chat.js";
import type { SavedSession, StopReason } from "../generation/session.js";

const SESSION_RECORD = "attention-sinks chat session";
const STOP_REASONS: readonly StopReason[] = ["max_new_tokens", "eos", "stop_string", "interrupted"];

export interface SessionState extends SavedSession {
  /** The model and cache settings the stream belongs to (a state of another is refused). */
  model: string;
  chat: ChatState | null;
  /** How many messages the conversation holds (the replies included), and their digest. */
  messages_seen: number;
  messages_digest: string;
}

/** The digest of a conversation's first messages, extended by `messages`. */
export function extendDigest(digest: string, messages: readonly ChatMessage[]): string {
  for (const { role, content } of messages) digest = createHash("sha256").update(digest).update(JSON.stringify([role, content])).digest("hex");
  return digest;
}

export const EMPTY_DIGEST = "";

export function encodeSessionState(state: SessionState): Uint8Array {
  const chat = state.chat === null ? null : { ...state.chat, last_token: state.chat.last_token?.toString() ?? null };
  const header = { model: state.model, pending_token: state.pending_token, chat, messages_seen: state.messages_seen, messages_digest: state.messages_digest };
  return encodeStateRecord(SESSION_RECORD, header, [state.stream]);
}

/** Reads a saved session of `model`; a corrupt or foreign one throws a StateRecordError naming what is wrong. */
export function decodeSessionState(bytes: Uint8Array, model: string): SessionState {
  const { header, arrays } = decodeStateRecord(bytes, SESSION_RECORD);
  if (header.model !== model) throw new StateRecordError(`the session was saved by ${JSON.stringify(header.model)}, not this server's ${JSON.stringify(model)}`);
  const [stream] = arrays;
  const { pending_token, messages_seen, messages_digest } = header;
  const chat = readChat(header.chat);
  if (
    arrays.length !== 1 ||
    !(stream instanceof Uint8Array) ||
    !(pending_token === null || Number.isInteger(pending_token)) ||
    !Number.isInteger(messages_seen) ||
    typeof messages_digest !== "string"
  ) {
    throw new StateRecordError("the saved session's fields are malformed");
  }
  return { model, stream, pending_token: pending_token as number | null, chat, messages_seen: messages_seen as number, messages_digest };
}

function readChat(value: unknown): ChatState | null {
  if (value === null) return null;
  const chat = (value ?? {}) as Record<string, unknown>;
  const messages = chat.messages;
  const wellFormed =
    Array.isArray(messages) &&
    messages.every((message: { role?: unknown; content?: unknown } | null) => typeof message?.role === "string" && typeof message.content === "string") &&
    typeof chat.reply === "string" &&
    STOP_REASONS.includes(chat.stopped as StopReason) &&
    (chat.stop_string === null || typeof chat.stop_string === "string") &&
    (chat.last_token === null || (typeof chat.last_token === "string" && /^\d+$/.test(chat.last_token)));
  if (!wellFormed) throw new StateRecordError("the saved session's last exchange is malformed");
  return {
    messages: messages as ChatMessage[],
    reply: chat.reply as string,
    stopped: chat.stopped as StopReason,
    stop_string: chat.stop_string as string | null,
    last_token: chat.last_token === null ? null : BigInt(chat.last_token as string),
  };
}

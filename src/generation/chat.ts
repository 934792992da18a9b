/**
 * Multi-turn chat on one endless attention-sink stream. Each turn feeds only what the stream has not seen:
 * the model's chat template rendered for the new message (the difference between the conversation with and
 * without it), or a plain `User:` / `Assistant:` format when the tokenizer has no template. Only the
 * previous exchange is kept for rendering, so a conversation of any length runs in constant memory.
 */
import type { ChatMessage, TextTokenizer } from "../backend/backend.js";
import type { GenerationSession, StopReason, TurnOptions, TurnResult } from "./session.js";

export type ChatFormat = "chat_template" | "plain";

/** Where a plain-format reply ends: the model starting the user's next line itself. */
const PLAIN_USER_MARKER = "\nUser:";

export interface ChatReply extends TurnResult {
  /** The reply as streamed (without a stop string). */
  reply: string;
}

/** What a chat keeps between turns (the last exchange and how its reply ended), to save and restore it. */
export interface ChatState {
  messages: ChatMessage[];
  reply: string;
  stopped: StopReason;
  stop_string: string | null;
  last_token: bigint | null;
}

export class Chat {
  readonly format: ChatFormat;
  /** The last exchange and how its reply ended: all a template needs to render the next turn's delta. */
  private previous: ChatState | null;

  /** A chat on `session`'s stream; `state` continues one whose stream the session holds (null: a new one). */
  constructor(
    readonly session: GenerationSession,
    state: ChatState | null = null,
  ) {
    this.format = session.tokenizer.has_chat_template ? "chat_template" : "plain";
    this.previous = state;
  }

  get state(): ChatState | null {
    return this.previous;
  }

  /** Sends a user message; the reply streams through `options.onText`. */
  send(message: string, options: TurnOptions): Promise<ChatReply> {
    return this.sendMessages([{ role: "user", content: message }], options);
  }

  /** Sends the messages that follow the conversation so far (a system prompt and a user message, say). */
  async sendMessages(messages: readonly ChatMessage[], options: TurnOptions): Promise<ChatReply> {
    let reply = "";
    const stops = options.stop_strings ?? [];
    const result = await this.session.generate(this.turnTokens(messages), {
      ...options,
      stop_strings: this.format === "plain" ? [PLAIN_USER_MARKER, ...stops] : stops,
      onText: (text) => {
        reply += text;
        options.onText?.(text);
      },
    });
    this.previous = { messages: [...messages], reply, stopped: result.stopped, stop_string: result.stop_string, last_token: result.last_token };
    return { ...result, reply };
  }

  /** Forgets the conversation: the next message starts a new stream. */
  reset(): void {
    this.previous = null;
    this.session.reset();
  }

  /** The text the next turn feeds for `message`: what the stream has not seen of the conversation. */
  nextTurnText(message: string): string {
    return this.turnText([{ role: "user", content: message }]);
  }

  private turnText(messages: readonly ChatMessage[]): string {
    return this.format === "plain" ? this.plainTurn(messages) : this.templateTurn(messages);
  }

  private turnTokens(messages: readonly ChatMessage[]): number[] {
    // A template writes its own BOS; the plain format gets the tokenizer's at the start of the stream.
    const add_special_tokens = this.previous === null && this.format === "plain";
    return this.session.tokenizer.encode(this.turnText(messages), { add_special_tokens });
  }

  private plainTurn(messages: readonly ChatMessage[]): string {
    if (this.previous === null) return plainTranscript(messages);
    // Later turns start on a line of their own after the reply.
    const text = `\n${plainTranscript(messages)}`;
    // A reply cut at the marker has already streamed it.
    return this.previous.stop_string === PLAIN_USER_MARKER && text.startsWith(PLAIN_USER_MARKER) ? text.slice(PLAIN_USER_MARKER.length) : text;
  }

  private templateTurn(messages: readonly ChatMessage[]): string {
    const tokenizer = this.session.tokenizer;
    const previous = this.previous;
    if (previous === null) return render(tokenizer, messages, true);
    const history: ChatMessage[] = [...previous.messages, { role: "assistant", content: previous.reply }];
    const before = render(tokenizer, history, false);
    const after = render(tokenizer, [...history, ...messages], true);
    // The stream holds the conversation up to the end of the reply; what the template writes after it
    // (its end-of-turn marker, then the new messages) is new, unless the model already generated the marker.
    const replyAt = before.lastIndexOf(previous.reply.trim());
    const streamed = replyAt < 0 ? before.length : replyAt + previous.reply.trim().length;
    // A template that rewrites earlier turns has no stable prefix: the new messages open a conversation of their own.
    if (!after.startsWith(before.slice(0, streamed))) return render(tokenizer, messages, true);
    let delta = after.slice(streamed);
    const { stopped, last_token } = previous;
    if (stopped === "eos" && last_token !== null) {
      const marker = tokenizer.decode([last_token], { skip_special_tokens: false });
      if (delta.startsWith(marker)) delta = delta.slice(marker.length);
    }
    return delta;
  }
}

/** A conversation in the plain format, ending where the assistant speaks next: `User: ...\nAssistant:`. */
export function plainTranscript(messages: readonly ChatMessage[]): string {
  const lines = messages.map(({ role, content }) => `${role.charAt(0).toUpperCase()}${role.slice(1)}: ${content}`);
  return `${lines.join("\n")}\nAssistant:`;
}

function render(tokenizer: TextTokenizer, messages: readonly ChatMessage[], add_generation_prompt: boolean): string {
  return tokenizer.renderChat(messages, add_generation_prompt);
}

/** A prompts file that cannot be read as prompts. */
export class PromptFileError extends Error {
  override name = "PromptFileError";
}

/**
 * The prompts of a file, in order: one per line, or JSON lines (when the first line starts with `{`) with a
 * `prompt` string or a `turns` array of strings (as MT-Bench's question file has). Blank lines are skipped.
 */
export function parsePrompts(text: string): string[] {
  const lines = text.split(/\r?\n/).map((line, index) => ({ line, number: index + 1 })).filter(({ line }) => line.trim() !== "");
  if (!lines[0]?.line.trimStart().startsWith("{")) return lines.map(({ line }) => line);
  return lines.flatMap(({ line, number }) => {
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch (error) {
      throw new PromptFileError(`line ${number} is not valid JSON: ${(error as Error).message}`);
    }
    const { prompt, turns } = (record ?? {}) as { prompt?: unknown; turns?: unknown };
    if (typeof prompt === "string") return [prompt];
    if (Array.isArray(turns) && turns.length > 0 && turns.every((turn) => typeof turn === "string")) return turns as string[];
    throw new PromptFileError(`line ${number} has neither a "prompt" string nor a "turns" array of strings`);
  });
}

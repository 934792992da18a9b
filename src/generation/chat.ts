/**
 * Multi-turn chat on one endless attention-sink stream. Each turn feeds only what the stream has not seen:
 * the model's chat template rendered for the new message (the difference between the conversation with and
 * without it), or a plain `User:` / `Assistant:` format when the tokenizer has no template. Only the
 * previous exchange is kept for rendering, so a conversation of any length runs in constant memory.
 */
import type { ChatMessage, TextTokenizer } from "../backend/backend.js";
import type { GenerationSession, TurnOptions, TurnResult } from "./session.js";

export type ChatFormat = "chat_template" | "plain";

/** Where a plain-format reply ends: the model starting the user's next line itself. */
const PLAIN_USER_MARKER = "\nUser:";

export interface ChatReply extends TurnResult {
  /** The reply as streamed (without a stop string). */
  reply: string;
}

export class Chat {
  readonly format: ChatFormat;
  /** The last exchange and how its reply ended: all a template needs to render the next turn's delta. */
  private previous: { user: string; reply: string; result: TurnResult } | null = null;

  constructor(readonly session: GenerationSession) {
    this.format = session.tokenizer.has_chat_template ? "chat_template" : "plain";
  }

  /** Sends a user message; the reply streams through `options.onText`. */
  async send(message: string, options: Omit<TurnOptions, "stop_strings">): Promise<ChatReply> {
    let reply = "";
    const result = await this.session.generate(this.userTurn(message), {
      ...options,
      stop_strings: this.format === "plain" ? [PLAIN_USER_MARKER] : [],
      onText: (text) => {
        reply += text;
        options.onText?.(text);
      },
    });
    this.previous = { user: message, reply, result };
    return { ...result, reply };
  }

  /** Forgets the conversation: the next message starts a new stream. */
  reset(): void {
    this.previous = null;
    this.session.reset();
  }

  /** The text the next turn feeds for `message`: what the stream has not seen of the conversation. */
  nextTurnText(message: string): string {
    return this.format === "plain" ? this.plainTurn(message) : this.templateTurn(message);
  }

  private userTurn(message: string): number[] {
    // A template writes its own BOS; the plain format gets the tokenizer's at the start of the stream.
    const add_special_tokens = this.previous === null && this.format === "plain";
    return this.session.tokenizer.encode(this.nextTurnText(message), { add_special_tokens });
  }

  private plainTurn(message: string): string {
    const previous = this.previous;
    if (previous === null) return plainTranscript([{ role: "user", content: message }]);
    // A reply cut at the marker has already streamed it.
    return previous.result.stopped === "stop_string" ? ` ${message}\nAssistant:` : `${PLAIN_USER_MARKER} ${message}\nAssistant:`;
  }

  private templateTurn(message: string): string {
    const tokenizer = this.session.tokenizer;
    const user: ChatMessage = { role: "user", content: message };
    const previous = this.previous;
    if (previous === null) return render(tokenizer, [user], true);
    const history: ChatMessage[] = [
      { role: "user", content: previous.user },
      { role: "assistant", content: previous.reply },
    ];
    const before = render(tokenizer, history, false);
    const after = render(tokenizer, [...history, user], true);
    // The stream holds the conversation up to the end of the reply; what the template writes after it
    // (its end-of-turn marker, then the new message) is new, unless the model already generated the marker.
    const replyAt = before.lastIndexOf(previous.reply.trim());
    const streamed = replyAt < 0 ? before.length : replyAt + previous.reply.trim().length;
    // A template that rewrites earlier turns has no stable prefix: the new message opens a conversation of its own.
    if (!after.startsWith(before.slice(0, streamed))) return render(tokenizer, [user], true);
    let delta = after.slice(streamed);
    const { stopped, last_token } = previous.result;
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

function render(tokenizer: TextTokenizer, messages: ChatMessage[], add_generation_prompt: boolean): string {
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

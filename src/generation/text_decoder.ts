/**
 * Incremental detokenization in constant memory. A token's text can depend on its neighbours (SentencePiece
 * decoders strip a leading space, byte-fallback pieces only form a character together), so each new token is
 * decoded together with the token(s) before it, and only the text that the context does not already account
 * for is emitted. transformers.js's TextStreamer re-decodes everything since the last newline instead, which
 * costs O(n) per token on text without newlines.
 */
import type { TextTokenizer } from "../backend/backend.js";

/** Prompt tokens kept as context for the first generated token. */
const CONTEXT_TOKENS = 4;
/** Tokens held back at most while they decode to nothing or to an incomplete character. */
const MAX_HELD_TOKENS = 8;
const REPLACEMENT_CHARACTER = "\uFFFD";

export class IncrementalTextDecoder {
  private ids: bigint[] = [];
  /** ids[0, read) are emitted; ids[0, read) is also the context the next text is decoded after. */
  private read = 0;

  constructor(private readonly tokenizer: Pick<TextTokenizer, "decode">) {}

  /** Sets the tokens the next ones continue (such as the end of a prompt), without emitting them. */
  setContext(ids: readonly bigint[]): void {
    this.ids = ids.slice(-CONTEXT_TOKENS);
    this.read = this.ids.length;
  }

  /** Adds a token; returns the text that is now final ("" while the held tokens add none or end mid-character). */
  push(id: bigint): string {
    this.ids.push(id);
    const before = this.decode(this.ids.slice(0, this.read));
    const after = this.decode(this.ids);
    const held = this.ids.length - this.read;
    if ((after.length <= before.length || after.endsWith(REPLACEMENT_CHARACTER)) && held < MAX_HELD_TOKENS) return "";
    // The emitted tokens become the context of the next ones; older ones are dropped.
    this.ids = this.ids.slice(this.read);
    this.read = this.ids.length;
    return after.slice(before.length);
  }

  /** Emits whatever is held back (at the end of a stream). */
  flush(): string {
    if (this.read === this.ids.length) return "";
    const text = this.decode(this.ids).slice(this.decode(this.ids.slice(0, this.read)).length);
    this.setContext(this.ids);
    return text;
  }

  private decode(ids: bigint[]): string {
    return ids.length === 0 ? "" : this.tokenizer.decode(ids, { skip_special_tokens: true });
  }
}

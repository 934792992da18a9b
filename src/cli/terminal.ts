/**
 * Terminal plumbing of the generation commands: the text goes to stdout (and a file) as it is produced,
 * everything else to stderr: a live status line, JSON-lines statistics and a summary.
 */
import { closeSync, openSync, writeSync } from "node:fs";
import type { SinkCacheStats } from "../cache/sink_cache.js";
import { count, formatBytes } from "./format.js";

/** The text stream: stdout, plus a file when asked. Writes are synchronous, so nothing is lost on exit. */
export class TextOutput {
  private readonly file: number | null;
  /** Whether stdout and the file end with a newline (each is given one at close otherwise). */
  private readonly lineEnded = { stdout: true, file: true };
  /** Set once stdout's reader has gone away (`| head`); stdout is not written after that. */
  stdoutClosed = false;

  /** `onStdoutClosed` runs when the reader of stdout goes away, so the caller can stop producing. */
  constructor(path: string | undefined, onStdoutClosed: () => void) {
    this.file = path === undefined ? null : openSync(path, "w");
    process.stdout.on("error", (error: NodeJS.ErrnoException) => {
      if (error.code !== "EPIPE") throw error;
      this.stdoutClosed = true;
      onStdoutClosed();
    });
  }

  write(text: string): void {
    this.toTerminal(text);
    this.toFile(text);
  }

  /** Text for stdout only (such as the prompt for typed input). */
  toTerminal(text: string): void {
    if (!text || this.stdoutClosed) return;
    process.stdout.write(text);
    this.lineEnded.stdout = text.endsWith("\n");
  }

  /** Text for the file only (such as typed input, which the terminal shows already). */
  toFile(text: string): void {
    if (this.file === null || !text) return;
    writeSync(this.file, text);
    this.lineEnded.file = text.endsWith("\n");
  }

  /** Ends the text with a newline and closes the file. */
  close(): void {
    if (!this.lineEnded.stdout) this.toTerminal("\n");
    if (this.file === null) return;
    if (!this.lineEnded.file) this.toFile("\n");
    closeSync(this.file);
  }
}

/** One object per line, written as it happens. */
export class JsonLines {
  private readonly file: number | null;

  constructor(path: string | undefined) {
    this.file = path === undefined ? null : openSync(path, "w");
  }

  write(record: Record<string, unknown>): void {
    if (this.file !== null) writeSync(this.file, JSON.stringify(record) + "\n");
  }

  close(): void {
    if (this.file !== null) closeSync(this.file);
  }
}

/** Counters of a stream at one moment. */
export interface StreamSample extends SinkCacheStats {
  tokens: number;
  seconds: number;
  tokens_per_second: number;
  rss_bytes: number;
}

export function streamSample(tokens: number, seconds: number, stats: SinkCacheStats): StreamSample {
  return {
    tokens,
    seconds: round(seconds, 3),
    tokens_per_second: round(seconds > 0 ? tokens / seconds : 0, 1),
    ...stats,
    rss_bytes: process.memoryUsage.rss(),
  };
}

/** The highest resident set size of the process so far. */
export function maxRssBytes(): number {
  return process.resourceUsage().maxRSS * 1024;
}

export function describeSample(sample: StreamSample): string {
  return (
    `${count(sample.tokens)} tokens | ${count(sample.tokens_per_second)} tokens/s | ` +
    `cache ${count(sample.cached_tokens)} of ${count(sample.seen_tokens)} tokens | KV ${formatBytes(sample.kv_cache_bytes)} | RSS ${formatBytes(sample.rss_bytes)}`
  );
}

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

const TTY_REFRESH_MS = 200;
const LOG_REFRESH_MS = 10_000;

/**
 * A status line on stderr. When stdout is the same terminal, the bottom row is reserved for it (a scroll
 * region), so streamed text never collides with it; on a terminal of its own it is redrawn in place; when
 * stderr is not a terminal, a line is logged every 10 seconds instead.
 */
export class StatusLine {
  private readonly tty = process.stderr.isTTY === true;
  private readonly pinned = this.tty && process.stdout.isTTY === true;
  private rows = 0;
  private last = 0;
  private shown = false;

  /** Shows `render()` unless the line was refreshed too recently. */
  update(render: () => string): void {
    const now = performance.now();
    if (now - this.last < (this.tty ? TTY_REFRESH_MS : LOG_REFRESH_MS)) return;
    this.last = now;
    const text = render();
    if (!this.tty) {
      process.stderr.write(text + "\n");
      return;
    }
    const columns = process.stderr.columns || 80;
    const line = text.length > columns - 1 ? text.slice(0, columns - 1) : text;
    if (!this.pinned) {
      process.stderr.write(`\r\x1b[K${line}`);
    } else {
      this.reserveBottomRow();
      process.stderr.write(`\x1b7\x1b[${this.rows};1H\x1b[2K${line}\x1b8`);
    }
    this.shown = true;
  }

  /** Removes the line (and the scroll region), leaving the terminal as it was. */
  clear(): void {
    if (!this.shown) return;
    this.shown = false;
    if (!this.pinned) process.stderr.write("\r\x1b[K");
    else process.stderr.write(`\x1b7\x1b[r\x1b[${this.rows};1H\x1b[2K\x1b8`);
    this.rows = 0;
  }

  private reserveBottomRow(): void {
    const rows = process.stderr.rows || 24;
    if (rows === this.rows) return;
    // Index down then back up keeps the cursor (and its column) off the bottom row, scrolling if it was
    // there; setting the region homes the cursor, hence the save and restore around it.
    if (this.rows === 0) process.stderr.write("\x1bD\x1bM");
    process.stderr.write(`\x1b7\x1b[1;${rows - 1}r\x1b8`);
    this.rows = rows;
  }
}

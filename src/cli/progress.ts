/**
 * A one-line progress bar for a perplexity run: tokens done, tokens per second, overall perplexity so far
 * and the KV cache size. On a terminal it redraws in place; otherwise (a log file, a pipe) it prints a line
 * at every tenth of the run.
 */
import type { TokenRecord } from "../perplexity/evaluate.js";
import { formatBytes } from "./format.js";

/** The stream the bar writes to (process.stderr by default). */
export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
}

const REDRAW_MS = 100;
const BAR_WIDTH = 24;

export class ProgressBar {
  /** The first token's time and count: loading and tokenizing are not part of the rate. */
  private first: { time: number; done: number } | null = null;
  private lastDraw = -Infinity;
  private lastTenth = 0;
  private line = "";

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly stream: ProgressStream = process.stderr,
  ) {}

  update(record: TokenRecord): void {
    const done = record.input_length;
    this.first ??= { time: performance.now(), done };
    this.line = this.render(record, this.first);
    const now = performance.now();
    if (this.stream.isTTY) {
      if (now - this.lastDraw < REDRAW_MS && done < this.total) return;
      this.lastDraw = now;
      this.stream.write(`\r\x1b[K${this.line}`);
      return;
    }
    const tenth = Math.floor((10 * done) / this.total);
    if (tenth > this.lastTenth) {
      this.lastTenth = tenth;
      this.stream.write(`${this.line}\n`);
    }
  }

  /** Ends the bar's line (on a terminal), leaving the last state visible. */
  finish(): void {
    if (this.stream.isTTY && this.line) this.stream.write(`\r\x1b[K${this.line}\n`);
  }

  private render(record: TokenRecord, first: { time: number; done: number }): string {
    const done = record.input_length;
    const fraction = Math.min(1, done / this.total);
    const filled = Math.round(fraction * BAR_WIDTH);
    const bar = "=".repeat(filled) + (filled < BAR_WIDTH ? ">" : "") + " ".repeat(Math.max(0, BAR_WIDTH - filled - 1));
    const seconds = (performance.now() - first.time) / 1000;
    const rate = seconds > 0 ? (done - first.done) / seconds : 0;
    return (
      `${this.label} [${bar}] ${done}/${this.total} ${(100 * fraction).toFixed(0)}% ` +
      `${rate.toFixed(1)} tok/s  ppl ${record.overall_ppl.toFixed(2)}  kv ${formatBytes(record.kv_cache_bytes)}`
    );
  }
}

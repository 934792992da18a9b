/**
 * The benchmark's CSV files: one row per evaluated token, appended as the run goes. Rows are written whole
 * and synchronously, so the file is a valid CSV between any two writes, and a signal handler can flush it.
 */
import { closeSync, openSync, writeSync } from "node:fs";
import type { TokenRecord } from "./evaluate.js";

export const CSV_COLUMNS = ["input_length", "nll", "ppl", "overall_ppl", "kv_cache_bytes", "rss_bytes", "latency"] as const satisfies readonly (keyof TokenRecord)[];

/** Thrown when a CSV exists and overwriting it was not asked for. */
export class OutputExistsError extends Error {
  override name = "OutputExistsError";
}

export class CsvLogWriter {
  private pending: string[] = [];
  private fd: number | null;
  private readonly flushEvery: number;

  /**
   * Creates `path` with the header row. An existing file is replaced only when `overwrite` is set (the
   * check and the creation are one atomic open).
   * @param flushEvery rows buffered before they are written.
   */
  constructor(
    readonly path: string,
    options: { overwrite: boolean; flushEvery?: number },
  ) {
    this.flushEvery = options.flushEvery ?? 10;
    try {
      this.fd = openSync(path, options.overwrite ? "w" : "wx");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "EEXIST") {
        throw new OutputExistsError(`${path} already exists; pass --overwrite to replace it`);
      }
      throw error;
    }
    writeSync(this.fd, CSV_COLUMNS.join(",") + "\n");
  }

  append(record: TokenRecord): void {
    this.pending.push(CSV_COLUMNS.map((column) => String(record[column])).join(",") + "\n");
    if (this.pending.length >= this.flushEvery) this.flush();
  }

  /** Writes the buffered rows in one write. */
  flush(): void {
    if (this.fd === null || this.pending.length === 0) return;
    writeSync(this.fd, this.pending.join(""));
    this.pending = [];
  }

  close(): void {
    if (this.fd === null) return;
    this.flush();
    closeSync(this.fd);
    this.fd = null;
  }
}

/** A benchmark CSV by column. */
export type BenchmarkColumns = Record<string, number[]>;

/**
 * Parses a benchmark CSV (any numeric columns with a header row). A last line cut short by a killed writer
 * is dropped; any other malformed row is an error.
 * @param file names the file in error messages.
 */
export function parseBenchmarkCsv(text: string, file: string): BenchmarkColumns {
  const lines = text.split(/\r?\n/);
  const header = lines[0].split(",").map((name) => name.trim());
  if (header.length === 0 || header[0] === "") throw new Error(`${file}: no header row`);
  const columns: BenchmarkColumns = Object.fromEntries(header.map((name) => [name, []]));
  const last = text.endsWith("\n") ? lines.length - 2 : lines.length - 1;
  for (let i = 1; i <= last; i++) {
    if (lines[i] === "") continue;
    const fields = lines[i].split(",").map((field) => field.trim());
    const values = fields.map((field) => (field === "" ? NaN : Number(field)));
    if (fields.length !== header.length || values.some((v, j) => Number.isNaN(v) && fields[j] !== "NaN")) {
      if (i === last && !text.endsWith("\n")) break;
      throw new Error(`${file}, line ${i + 1}: expected ${header.length} numbers, got "${lines[i]}"`);
    }
    header.forEach((name, j) => columns[name].push(values[j]));
  }
  return columns;
}

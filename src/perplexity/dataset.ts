/**
 * The benchmark's text: a local file or folder, or a Hugging Face Hub dataset (read from the parquet files
 * the Hub serves for it). Samples are read lazily, one at a time, so a run that needs the first book of a
 * large dataset reads little more than that.
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { extname, join, relative, sep } from "node:path";
import { env } from "@huggingface/transformers";
import type { AsyncBuffer } from "hyparquet";
import { requireOptionalDependencies } from "../platform/optional_dependency.js";

export interface DatasetOptions {
  /** A `.txt`, `.jsonl`, `.json` or `.parquet` file, a folder of them, or a Hub dataset id. */
  dataset_name: string;
  /** The column holding the text (jsonl, json, parquet). Default `text`. */
  data_column?: string;
  /** The dataset configuration (Hub) or subfolder (local folder). */
  task?: string;
  /** The split (Hub), or the files of a folder named after it. Default `test`. */
  split?: string;
}

export class DatasetError extends Error {
  override name = "DatasetError";
}

const EXTENSIONS = new Set([".txt", ".jsonl", ".json", ".parquet"]);
/** Rows read from a parquet file at a time: books can be megabytes each. */
const PARQUET_BATCH = 8;
const HUB_TIMEOUT_MS = 30_000;

/** The text samples of a dataset, in order. */
export async function* loadTextSamples(options: DatasetOptions): AsyncGenerator<string> {
  const { dataset_name } = options;
  const column = options.data_column ?? "text";
  if (existsSync(dataset_name)) {
    for (const file of localFiles(dataset_name, options)) yield* fileSamples(file, column);
    return;
  }
  if (looksLikePath(dataset_name)) throw new DatasetError(`${dataset_name} does not exist`);
  yield* hubSamples(dataset_name, options.task ?? "default", options.split ?? "test", column);
}

function looksLikePath(name: string): boolean {
  return EXTENSIONS.has(extname(name)) || /^(\.{1,2}|~)?[/\\]/.test(name) || name.split("/").length > 2;
}

/**
 * The data files of a path: the file itself, or a folder's files (its `task` subfolder when there is one)
 * in path order. A folder's files named after the split (`test.jsonl`, `test-00000-of-00001.parquet`,
 * `test/...`) are used when there are any, otherwise all of them.
 */
function localFiles(path: string, options: DatasetOptions): string[] {
  if (!statSync(path).isDirectory()) {
    if (!EXTENSIONS.has(extname(path))) throw new DatasetError(`${path}: expected a .txt, .jsonl, .json or .parquet file`);
    return [path];
  }
  const root = options.task && existsSync(join(path, options.task)) ? join(path, options.task) : path;
  const files = (readdirSync(root, { recursive: true }) as string[])
    .map((name) => join(root, name))
    .filter((file) => EXTENSIONS.has(extname(file)) && statSync(file).isFile())
    .sort();
  const split = options.split ?? "test";
  const named = files.filter((file) => relative(root, file).split(sep).some((part) => part === split || part.startsWith(`${split}.`) || part.startsWith(`${split}-`)));
  const chosen = named.length > 0 ? named : files;
  if (chosen.length === 0) throw new DatasetError(`${path} holds no .txt, .jsonl, .json or .parquet file`);
  return oneFormat(path, chosen);
}

/**
 * The files of the format most of them have, as the datasets library reads a folder (a `reference.json`
 * beside the `.txt` files is not a sample); a tie is ambiguous, and the user names the file.
 */
function oneFormat(path: string, files: string[]): string[] {
  const byFormat = new Map<string, string[]>();
  for (const file of files) byFormat.set(extname(file), [...(byFormat.get(extname(file)) ?? []), file]);
  if (byFormat.size === 1) return files;
  const counts = [...byFormat.values()].map((group) => group.length);
  const most = Math.max(...counts);
  const formats = [...byFormat].filter(([, group]) => group.length === most);
  if (formats.length === 1) return formats[0][1];
  const listing = [...byFormat]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([format, group]) => `${format}: ${group.map((file) => relative(path, file)).join(", ")}`).join("; ");
  throw new DatasetError(`${path} holds as many files of one format as of another (${listing}); give the file to read with --dataset_name`);
}

async function* fileSamples(file: string, column: string): AsyncGenerator<string> {
  const extension = extname(file);
  if (extension === ".parquet") {
    const { asyncBufferFromFile } = await parquetReader();
    yield* parquetSamples(await asyncBufferFromFile(file), file, column);
    return;
  }
  const text = await readFile(file, "utf8");
  if (extension === ".txt") {
    yield text;
    return;
  }
  let index = 0;
  for (const row of jsonRows(text, file)) yield columnText(row, column, `${file}, row ${index++}`);
}

/** A `.json` array of rows (or one row), or JSON Lines, parsed a line at a time as rows are wanted. */
function* jsonRows(text: string, file: string): Generator<unknown> {
  if (extname(file) === ".json") {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text) as unknown;
    } catch {
      // not one JSON document: read it as JSON Lines, as the datasets library does
    }
    if (parsed !== undefined) {
      yield* Array.isArray(parsed) ? parsed : [parsed];
      return;
    }
  }
  for (const [index, line] of text.split("\n").entries()) {
    if (line.trim() === "") continue;
    let row: unknown;
    try {
      row = JSON.parse(line) as unknown;
    } catch (error) {
      throw new DatasetError(`${file}, line ${index + 1}: not valid JSON (${(error as Error).message})`);
    }
    yield row;
  }
}

function columnText(row: unknown, column: string, where: string): string {
  if (typeof row !== "object" || row === null || Array.isArray(row)) throw new DatasetError(`${where} is not an object with a "${column}" column`);
  const value = (row as Record<string, unknown>)[column];
  if (typeof value !== "string") {
    if (column in row) throw new DatasetError(`${where}: its "${column}" column holds ${describeValue(value)}, not text; choose a text column with --data_column`);
    const columns = Object.keys(row).join(", ");
    throw new DatasetError(`${where} has no column "${column}" (its columns: ${columns || "none"}); choose one with --data_column`);
  }
  return value;
}

function describeValue(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  return typeof value === "object" ? "an object" : `a ${typeof value} (${String(value)})`;
}

async function parquetReader(): Promise<typeof import("hyparquet")> {
  requireOptionalDependencies("Reading parquet datasets", ["hyparquet"]);
  return import("hyparquet");
}

async function* parquetSamples(file: AsyncBuffer, name: string, column: string): AsyncGenerator<string> {
  const { parquetMetadataAsync, parquetReadObjects, parquetSchema } = await parquetReader();
  const metadata = await parquetMetadataAsync(file).catch((error: Error) => {
    throw new DatasetError(`${name}: not a readable parquet file (${error.message})`);
  });
  const columns = parquetSchema(metadata).children.map((child) => child.element.name);
  if (!columns.includes(column)) {
    throw new DatasetError(`${name} has no column "${column}" (its columns: ${columns.join(", ")}); choose one with --data_column`);
  }
  const rows = Number(metadata.num_rows);
  for (let start = 0; start < rows; start += PARQUET_BATCH) {
    const batch = await parquetReadObjects({ file, metadata, columns: [column], rowStart: start, rowEnd: Math.min(rows, start + PARQUET_BATCH) });
    for (const [offset, row] of batch.entries()) yield columnText(row, column, `${name}, row ${start + offset}`);
  }
}

/** A Hub dataset through the Hub's parquet listing of a configuration's split. */
async function* hubSamples(id: string, task: string, split: string, column: string): AsyncGenerator<string> {
  const unreachable = (why: string) =>
    new DatasetError(
      `cannot load the Hub dataset "${id}": ${why}. Give a local .txt, .jsonl, .json or .parquet file or folder with --dataset_name instead`,
    );
  const offline = ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"].find((name) => /^(1|true|yes|on)$/i.test(process.env[name] ?? ""));
  if (offline) throw unreachable(`the Hugging Face Hub is off (${offline} is set)`);
  if (!env.allowRemoteModels) throw unreachable("the Hugging Face Hub is off (transformers.js env.allowRemoteModels is false)");
  // HF_ENDPOINT names a Hub mirror, as in the Python libraries.
  const host = process.env.HF_ENDPOINT ? `${process.env.HF_ENDPOINT.replace(/\/$/, "")}/` : env.remoteHost;
  const listing = new URL(`api/datasets/${id}/parquet/${encodeURIComponent(task)}/${encodeURIComponent(split)}`, host);
  let response: Response;
  try {
    response = await fetch(listing, { signal: AbortSignal.timeout(HUB_TIMEOUT_MS) });
  } catch (error) {
    const cause = (error as { cause?: { message?: string } }).cause?.message ?? (error as Error).message;
    throw unreachable(`the Hugging Face Hub cannot be reached (${cause}); this machine may be offline`);
  }
  if (!response.ok) throw unreachable(`the Hub answered ${response.status} for configuration "${task}", split "${split}" (see --task and --split)`);
  const urls = (await response.json()) as string[];
  const { asyncBufferFromUrl } = await parquetReader();
  for (const url of urls) yield* parquetSamples(await asyncBufferFromUrl({ url }), url, column);
}

/**
 * The shared models and data (`../shared` beside the repository root, see its SOURCES.md) for tests.
 *
 * A test that needs them asks {@link sharedFiles}: when a file is missing the test fails under CI (which
 * must provide them) and is skipped with a message elsewhere.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { TestContext } from "node:test";

/** The repository root: the nearest folder above this file with a package.json (tests run from dist/test). */
export function repositoryRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
  return dir;
}

/** Absolute path of the shared folder. */
export const SHARED_DIR = resolve(repositoryRoot(), "..", "shared");

/** Absolute path of a file in the shared folder, whether or not it exists. */
export function sharedPath(relative: string): string {
  return join(SHARED_DIR, relative);
}

/**
 * The absolute paths of `relatives` (paths inside the shared folder), or undefined when one is missing:
 * then, under CI (`process.env.CI` set), `t` fails with a message naming the files; otherwise `t` is
 * skipped with that message and the caller returns.
 */
export function sharedFiles(t: TestContext, ...relatives: string[]): string[] | undefined {
  const paths = relatives.map(sharedPath);
  const missing = paths.filter((path) => !existsSync(path));
  if (missing.length === 0) return paths;
  const message = `shared test data missing: ${missing.join(", ")} (see ../shared/SOURCES.md)`;
  if (process.env.CI) throw new Error(`${message}; CI must provide it`);
  t.skip(message);
  return undefined;
}

/** `data/reference.json`: the outputs of independent implementations the shared models must reproduce. */
export interface SharedReference {
  stories260K: {
    greedy_from_BOS_ids_first64: number[];
    greedy_from_BOS_text_runc_256steps: string;
    encode_Once_upon_a_time_with_BOS: number[];
    first_valid_story: { text: string; ids: number[]; mean_nll_nats: number };
  };
  "tinystories-656k": {
    greedy_from_BOS_ids: number[];
    first_valid_story: { ids: number[]; mean_nll_nats: number; n_predicted: number };
  };
}

/** Reads `data/reference.json` (same missing-file handling as {@link sharedFiles}). */
export function sharedReference(t: TestContext): SharedReference | undefined {
  const [path] = sharedFiles(t, "data/reference.json") ?? [];
  return path === undefined ? undefined : (JSON.parse(readFileSync(path, "utf8")) as SharedReference);
}

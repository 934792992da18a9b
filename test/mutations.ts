/**
 * A small mutation-testing harness: each mutation of test/mutations.json plants one realistic bug in src/,
 * and the test files it names must then fail. A mutation that survives marks a gap in the test suite.
 *
 *     npm run build && node dist/test/mutations.js [options] [ids...]
 *
 * Each mutation runs in its own scratch copy of the repository under os.tmpdir() (src, test, bench,
 * package.json and tsconfig.json copied, node_modules symlinked, ../shared linked beside it so the tests
 * that need the shared models find them), built there with the project's tsc, and tested with a fresh
 * ATTENTION_SINKS_CACHE and TMPDIR inside the scratch directory, which is removed afterwards. Mutations
 * run one after another (the tests already use two workers).
 *
 * Options:
 *   --all-tests      run the whole suite for every mutation instead of its named test files (slower)
 *   --exclude=A,B    with --all-tests, leave out these test files (names without .test.ts)
 *   --no-baseline    skip the run of the unmutated copy (which checks that the chosen tests pass at all)
 *   --timeout=S      seconds the tests of one mutation may take (default 900); a timeout counts as killed
 *   --json=FILE      also write the results as JSON
 *   --keep           keep the scratch directories (their paths are printed)
 *   --list           print the mutations and exit
 *
 * Exit status: 0 when every mutation was killed; 1 when one survived, was stale (its `find` snippet no
 * longer occurs exactly once in the source) or did not compile; 2 on a usage error or a failing baseline.
 */
import { spawn } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { repositoryRoot } from "./support/shared_data.js";

interface Mutation {
  id: string;
  /** A source file, relative to the repository root (under src/). */
  file: string;
  /** An exact snippet of the current source, occurring exactly once in `file`. */
  find: string;
  replace: string;
  /** Test files (names without `.test.ts`) expected to fail. */
  tests: string[];
  why: string;
}

type Outcome = "killed" | "killed (timeout)" | "SURVIVED" | "does not compile" | "STALE";

interface Result {
  id: string;
  file: string;
  outcome: Outcome;
  seconds: number;
  tests: string[];
  /** Test files with a failing test. */
  failed_files: string[];
  /** `file > test` of the failing tests (leaf tests only). */
  failed_tests: string[];
  /** Why a mutation is stale or does not compile, or the end of the test output when no failure was parsed. */
  detail?: string;
  why: string;
}

/** What the harness copies into each scratch repository (node_modules is linked, dist and .git are left out). */
const COPIED = ["src", "test", "bench", "demo", "package.json", "tsconfig.json"];
const DEFAULT_TIMEOUT_S = 900;
const BUILD_TIMEOUT_S = 300;

const ROOT = repositoryRoot();
const MUTATIONS_FILE = join(ROOT, "test", "mutations.json");

class UsageError extends Error {}

interface Options {
  ids: string[];
  allTests: boolean;
  exclude: string[];
  baseline: boolean;
  timeoutS: number;
  json?: string;
  keep: boolean;
  list: boolean;
}

function parseArgs(argv: string[]): Options {
  const options: Options = { ids: [], allTests: false, exclude: [], baseline: true, timeoutS: DEFAULT_TIMEOUT_S, keep: false, list: false };
  for (const arg of argv) {
    if (arg === "--all-tests") options.allTests = true;
    else if (arg === "--no-baseline") options.baseline = false;
    else if (arg === "--keep") options.keep = true;
    else if (arg === "--list") options.list = true;
    else if (arg.startsWith("--exclude=")) options.exclude.push(...arg.slice("--exclude=".length).split(",").filter(Boolean));
    else if (arg.startsWith("--timeout=")) {
      const value = Number(arg.slice("--timeout=".length));
      if (!Number.isFinite(value) || value <= 0) throw new UsageError(`--timeout needs a positive number of seconds, got ${arg}`);
      options.timeoutS = value;
    } else if (arg.startsWith("--json=")) options.json = resolve(arg.slice("--json=".length));
    else if (arg === "--help" || arg === "-h") {
      process.stdout.write("usage: node dist/test/mutations.js [--all-tests [--exclude=A,B]] [--no-baseline] [--timeout=S] [--json=FILE] [--keep] [--list] [ids...]\n");
      process.exit(0);
    } else if (arg.startsWith("-")) throw new UsageError(`unknown option ${arg}`);
    else options.ids.push(arg);
  }
  return options;
}

function loadMutations(): Mutation[] {
  const raw = JSON.parse(readFileSync(MUTATIONS_FILE, "utf8")) as unknown;
  if (!Array.isArray(raw)) throw new UsageError(`${MUTATIONS_FILE}: expected an array of mutations`);
  const seen = new Set<string>();
  return raw.map((entry, index): Mutation => {
    const where = `${MUTATIONS_FILE}, entry ${index}`;
    const m = entry as Partial<Mutation>;
    for (const key of ["id", "file", "find", "replace", "why"] as const) {
      if (typeof m[key] !== "string") throw new UsageError(`${where}: "${key}" must be a string`);
    }
    if (!Array.isArray(m.tests) || m.tests.length === 0 || !m.tests.every((t) => typeof t === "string")) {
      throw new UsageError(`${where}: "tests" must be a non-empty list of test file names`);
    }
    const mutation = m as Mutation;
    if (seen.has(mutation.id)) throw new UsageError(`${where}: duplicate id ${mutation.id}`);
    seen.add(mutation.id);
    if (!mutation.file.startsWith("src/")) throw new UsageError(`${where} (${mutation.id}): file must be under src/, got ${mutation.file}`);
    if (mutation.find === mutation.replace) throw new UsageError(`${where} (${mutation.id}): replace equals find`);
    for (const test of mutation.tests) {
      if (!existsSync(join(ROOT, "test", `${test}.test.ts`))) throw new UsageError(`${where} (${mutation.id}): no test file test/${test}.test.ts`);
    }
    return mutation;
  });
}

function occurrences(text: string, snippet: string): number {
  let count = 0;
  for (let at = text.indexOf(snippet); at >= 0; at = text.indexOf(snippet, at + 1)) count++;
  return count;
}

/** Why `mutation` cannot be applied to the tree at `root`, or undefined when its snippet occurs exactly once. */
function staleness(root: string, mutation: Mutation): string | undefined {
  const path = join(root, mutation.file);
  if (!existsSync(path)) return `${mutation.file} does not exist`;
  const count = occurrences(readFileSync(path, "utf8"), mutation.find);
  if (count === 0) return `snippet not found in ${mutation.file}`;
  if (count > 1) return `snippet found ${count} times in ${mutation.file} (it must occur exactly once)`;
  return undefined;
}

interface Scratch {
  dir: string;
  repo: string;
  cache: string;
  /** The tests' os.tmpdir(): what they leave there goes with the scratch directory. */
  tmp: string;
}

function makeScratch(label: string): Scratch {
  const dir = mkdtempSync(join(tmpdir(), `attention-sinks-mutation-${label.replace(/[^\w-]/g, "_")}-`));
  const repo = join(dir, "repo");
  mkdirSync(repo);
  for (const name of COPIED) {
    if (existsSync(join(ROOT, name))) cpSync(join(ROOT, name), join(repo, name), { recursive: true });
  }
  symlinkSync(join(ROOT, "node_modules"), join(repo, "node_modules"), "dir");
  // The tests find the shared models at <repository>/../shared.
  const shared = resolve(ROOT, "..", "shared");
  if (existsSync(shared)) symlinkSync(shared, join(dir, "shared"), "dir");
  const cache = join(dir, "conversion-cache");
  mkdirSync(cache);
  const tmp = join(dir, "tmp");
  mkdirSync(tmp);
  return { dir, repo, cache, tmp };
}

let current: Scratch | undefined;
/** The process group running now (build or tests), killed with the harness. */
let currentChild: number | undefined;
let keep = false;

function removeScratch(scratch: Scratch | undefined): void {
  if (!scratch) return;
  if (keep) process.stdout.write(`  (kept ${scratch.dir})\n`);
  else rmSync(scratch.dir, { recursive: true, force: true });
  if (current === scratch) current = undefined;
}

interface Run {
  code: number | null;
  timedOut: boolean;
  output: string;
}

/** Runs a command in its own process group, killing the whole group if it outlives `timeoutS`. */
function run(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, timeoutS: number): Promise<Run> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, { cwd, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
    currentChild = child.pid;
    const chunks: Buffer[] = [];
    child.stdout.on("data", (chunk: Buffer) => chunks.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => chunks.push(chunk));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        // already gone
      }
    }, timeoutS * 1000);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      currentChild = undefined;
      resolvePromise({ code, timedOut, output: Buffer.concat(chunks).toString("utf8") });
    });
  });
}

function build(scratch: Scratch): Promise<Run> {
  return run(join(scratch.repo, "node_modules", ".bin", "tsc"), ["-p", "tsconfig.json"], scratch.repo, process.env, BUILD_TIMEOUT_S);
}

function testFiles(scratch: Scratch, names: readonly string[] | "all", exclude: readonly string[] = []): string[] {
  if (names !== "all") return names.map((name) => join("dist", "test", `${name}.test.js`));
  return readdirSync(join(scratch.repo, "dist", "test"))
    .filter((name) => name.endsWith(".test.js") && !exclude.includes(name.slice(0, -".test.js".length)))
    .sort()
    .map((name) => join("dist", "test", name));
}

function runTests(scratch: Scratch, files: string[], timeoutS: number): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env, ATTENTION_SINKS_CACHE: scratch.cache, TMPDIR: scratch.tmp, TMP: scratch.tmp, TEMP: scratch.tmp };
  // Set when this harness itself runs under `node --test`; it would change how the tests report.
  delete env.NODE_TEST_CONTEXT;
  return run(process.execPath, ["--test", "--test-concurrency=2", "--test-reporter=tap", ...files], scratch.repo, env, timeoutS);
}

/** The failing leaf tests of a TAP report, as `file > name`, and their files. */
function failures(tap: string): { files: string[]; tests: string[] } {
  const lines = tap.split("\n");
  const files = new Set<string>();
  const tests: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const match = /^(\s*)not ok \d+ - (.*)$/.exec(lines[i]);
    if (!match) continue;
    const indent = match[1].length;
    let location = "";
    let failureType = "";
    // The YAML block follows, two spaces deeper, closed by "...".
    for (let j = i + 1; j < lines.length; j++) {
      const line = lines[j];
      if (line.trim() === "..." && line.length - line.trimStart().length === indent + 2) break;
      if (/^\s*(not )?ok \d+ - /.test(line)) break;
      const loc = /^\s*location: '(.*)'$/.exec(line);
      if (loc) location = loc[1];
      const type = /^\s*failureType: '(.*)'$/.exec(line);
      if (type) failureType = type[1];
    }
    if (failureType === "subtestsFailed") continue;
    const file = location ? basename(location.replace(/:\d+:\d+$/, "")).replace(/\.test\.js$/, "") : "?";
    if (file !== "?") files.add(file);
    tests.push(`${file} > ${match[2].replace(/\\#/g, "#")}`);
  }
  return { files: [...files].sort(), tests };
}

function tail(text: string, lines = 15): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

async function runMutation(mutation: Mutation, options: Options): Promise<Result> {
  const started = performance.now();
  const base = { id: mutation.id, file: mutation.file, tests: mutation.tests, why: mutation.why, failed_files: [], failed_tests: [] };
  const seconds = () => (performance.now() - started) / 1000;
  const scratch = (current = makeScratch(mutation.id));
  try {
    const stale = staleness(scratch.repo, mutation);
    if (stale) return { ...base, outcome: "STALE", seconds: seconds(), detail: stale };
    const path = join(scratch.repo, mutation.file);
    const source = readFileSync(path, "utf8");
    const at = source.indexOf(mutation.find);
    writeFileSync(path, source.slice(0, at) + mutation.replace + source.slice(at + mutation.find.length));

    const compiled = await build(scratch);
    if (compiled.code !== 0) {
      return { ...base, outcome: "does not compile", seconds: seconds(), detail: compiled.output.trim().split("\n").slice(0, 5).join("\n") };
    }
    const files = testFiles(scratch, options.allTests ? "all" : mutation.tests, options.exclude);
    const tested = await runTests(scratch, files, options.timeoutS);
    if (tested.timedOut) return { ...base, outcome: "killed (timeout)", seconds: seconds() };
    if (tested.code === 0) return { ...base, outcome: "SURVIVED", seconds: seconds() };
    const failed = failures(tested.output);
    return {
      ...base,
      outcome: "killed",
      seconds: seconds(),
      failed_files: failed.files,
      failed_tests: failed.tests,
      ...(failed.tests.length === 0 ? { detail: tail(tested.output) } : {}),
    };
  } finally {
    removeScratch(scratch);
  }
}

/** Builds and tests the unmutated tree: every mutation's verdict means nothing if its tests fail anyway. */
async function baseline(mutations: readonly Mutation[], options: Options): Promise<boolean> {
  const names = [...new Set(mutations.flatMap((m) => m.tests))].sort();
  process.stdout.write(`baseline: building the unmutated tree and running ${options.allTests ? `the whole suite${options.exclude.length > 0 ? ` but ${options.exclude.join(", ")}` : ""}` : names.join(", ")}\n`);
  const started = performance.now();
  const scratch = (current = makeScratch("baseline"));
  try {
    const compiled = await build(scratch);
    if (compiled.code !== 0) {
      process.stderr.write(`baseline: the unmutated tree does not compile:\n${tail(compiled.output)}\n`);
      return false;
    }
    const tested = await runTests(scratch, testFiles(scratch, options.allTests ? "all" : names, options.exclude), options.timeoutS);
    if (tested.code !== 0) {
      const failed = failures(tested.output);
      const what = tested.timedOut ? "timed out" : failed.tests.length > 0 ? failed.tests.join("\n  ") : tail(tested.output);
      process.stderr.write(`baseline: tests fail without any mutation:\n  ${what}\n`);
      return false;
    }
    process.stdout.write(`baseline: ok (${((performance.now() - started) / 1000).toFixed(1)} s)\n\n`);
    return true;
  } finally {
    removeScratch(scratch);
  }
}

function table(results: readonly Result[]): string {
  const rows = [
    ["id", "file", "result", "seconds", "failing test files"],
    ...results.map((r) => [r.id, r.file.replace(/^src\//, ""), r.outcome, r.seconds.toFixed(1), r.failed_files.join(", ")]),
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const line = (row: string[]) => row.map((cell, c) => (c === 3 ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join("  ").trimEnd();
  return [line(rows[0]), widths.map((w) => "-".repeat(w)).join("  "), ...rows.slice(1).map(line)].join("\n");
}

async function main(): Promise<number> {
  const options = parseArgs(process.argv.slice(2));
  keep = options.keep;
  const all = loadMutations();
  if (options.exclude.length > 0 && !options.allTests) throw new UsageError("--exclude only applies with --all-tests");
  for (const name of options.exclude) {
    if (!existsSync(join(ROOT, "test", `${name}.test.ts`))) throw new UsageError(`--exclude: no test file test/${name}.test.ts`);
  }
  const unknown = options.ids.filter((id) => !all.some((m) => m.id === id));
  if (unknown.length > 0) throw new UsageError(`unknown mutation id(s): ${unknown.join(", ")} (see --list)`);
  const selected = options.ids.length > 0 ? all.filter((m) => options.ids.includes(m.id)) : all;
  if (options.list) {
    for (const m of selected) process.stdout.write(`${m.id.padEnd(36)} ${m.file.padEnd(40)} [${m.tests.join(", ")}]  ${m.why}\n`);
    return 0;
  }

  // Stale snippets are reported before anything slow runs.
  for (const m of selected) {
    const stale = staleness(ROOT, m);
    if (stale) process.stderr.write(`STALE mutation ${m.id}: ${stale}; update test/mutations.json\n`);
  }
  const runnable = selected.filter((m) => staleness(ROOT, m) === undefined);
  if (options.baseline && runnable.length > 0 && !(await baseline(runnable, options))) return 2;

  const results: Result[] = [];
  for (const [index, mutation] of selected.entries()) {
    const result = await runMutation(mutation, options);
    results.push(result);
    const by = result.failed_files.length > 0 ? ` by ${result.failed_files.join(", ")}` : "";
    process.stdout.write(`[${index + 1}/${selected.length}] ${mutation.id}: ${result.outcome}${by} (${result.seconds.toFixed(1)} s)\n`);
    for (const test of result.failed_tests.slice(0, 3)) process.stdout.write(`    ${test}\n`);
    if (result.failed_tests.length > 3) process.stdout.write(`    ... and ${result.failed_tests.length - 3} more\n`);
    if (result.outcome === "STALE" || result.outcome === "does not compile") process.stdout.write(`    ${result.detail!.replace(/\n/g, "\n    ")}\n`);
    if (result.outcome === "killed" && result.failed_tests.length === 0) process.stdout.write(`    (no failing test parsed; output ends)\n    ${result.detail!.replace(/\n/g, "\n    ")}\n`);
  }

  process.stdout.write(`\n${table(results)}\n`);
  const survivors = results.filter((r) => r.outcome === "SURVIVED");
  if (survivors.length > 0) {
    process.stdout.write(`\nSURVIVED (${options.allTests ? "the whole suite passes" : "their named tests pass"} with the bug):\n`);
    for (const r of survivors) process.stdout.write(`  ${r.id} (${r.file}; tests ${r.tests.join(", ")}): ${r.why}\n`);
  }
  const broken = results.filter((r) => r.outcome === "STALE" || r.outcome === "does not compile");
  if (broken.length > 0) {
    process.stdout.write(`\nto fix in test/mutations.json:\n`);
    for (const r of broken) process.stdout.write(`  ${r.id}: ${r.outcome}: ${r.detail!.split("\n")[0]}\n`);
  }
  const killed = results.filter((r) => r.outcome.startsWith("killed")).length;
  process.stdout.write(`\n${killed} killed, ${survivors.length} survived, ${broken.length} stale or not compiling, of ${results.length}\n`);
  if (options.json) writeFileSync(options.json, JSON.stringify(results, null, 2) + "\n");
  return survivors.length > 0 || broken.length > 0 ? 1 : 0;
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    if (currentChild !== undefined) {
      try {
        process.kill(-currentChild, "SIGKILL");
      } catch {
        // already gone
      }
    }
    removeScratch(current);
    process.exit(130);
  });
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    removeScratch(current);
    if (error instanceof UsageError) {
      process.stderr.write(`mutations: ${error.message}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`mutations: ${(error as Error).stack ?? String(error)}\n`);
      process.exitCode = 2;
    }
  },
);

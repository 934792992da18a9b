/**
 * The package as a dependent project meets it: packed with `npm pack`, installed offline into a fresh project
 * with the one `.npmrc` line the README's Install section gives, then used from the command line, from a strict
 * TypeScript program, and without the optional packages that only the plot and parquet datasets need.
 */
import { before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, normalize, posix } from "node:path";
import { promisify } from "node:util";
import { OPTIONAL_DEPENDENCIES } from "../src/platform/optional_dependency.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";
import { repositoryRoot } from "./support/shared_data.js";

const run = promisify(execFile);
const ROOT = repositoryRoot();
const NPM = process.platform === "win32" ? "npm.cmd" : "npm";
const TSC = join(ROOT, "node_modules", "typescript", "bin", "tsc");

interface PackResult {
  filename: string;
  integrity: string;
  files: { path: string }[];
}

interface LockEntry {
  dev?: boolean;
  [key: string]: unknown;
}

let scratch = "";
let app = "";
let packed: PackResult;
let shipped = new Set<string>();

/** A lockfile for the dependent: the package from its tarball, and exactly this repository's locked runtime tree. */
function dependentLockfile(tarball: string): object {
  const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8")) as { packages: Record<string, LockEntry> };
  const manifest = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string; license: string };
  const own = lock.packages[""];
  const packages: Record<string, unknown> = {
    "": { name: "dependent", version: "1.0.0", dependencies: { "attention-sinks": tarball } },
    "node_modules/attention-sinks": {
      version: manifest.version,
      resolved: tarball,
      integrity: packed.integrity,
      license: manifest.license,
      dependencies: own.dependencies,
      peerDependencies: own.peerDependencies,
      peerDependenciesMeta: own.peerDependenciesMeta,
      bin: own.bin,
      engines: own.engines,
    },
  };
  for (const [path, entry] of Object.entries(lock.packages)) if (path !== "" && !entry.dev) packages[path] = entry;
  return { name: "dependent", version: "1.0.0", lockfileVersion: 3, requires: true, packages };
}

function inApp(file: string, args: readonly string[]) {
  return run(process.execPath, [file, ...args], { cwd: app, env: { ...process.env, ATTENTION_SINKS_CACHE: join(scratch, "cache") } });
}

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), "attention-sinks-package-"));
  app = join(scratch, "dependent");
  // dist is built by `npm test`; --ignore-scripts keeps `prepare` from building it again.
  const { stdout } = await run(NPM, ["pack", "--ignore-scripts", "--json", "--pack-destination", scratch], { cwd: ROOT });
  [packed] = JSON.parse(stdout) as PackResult[];
  shipped = new Set(packed.files.map((file) => file.path));
  const tarball = `file:../${packed.filename}`;
  await writeTinyTextModel(join(app, "model"), "llama", { seed: 3 });
  await writeFile(join(app, "package.json"), JSON.stringify({ name: "dependent", version: "1.0.0", type: "module", dependencies: { "attention-sinks": tarball } }));
  await writeFile(join(app, "package-lock.json"), JSON.stringify(dependentLockfile(tarball)));
  // The one line the README's Install section gives.
  await writeFile(join(app, ".npmrc"), "onnxruntime-node-install=skip\n");
  try {
    await run(NPM, ["ci", "--offline", "--no-audit", "--no-fund"], { cwd: app });
  } catch (error) {
    const { stderr } = error as { stderr: string };
    throw new Error(`the offline install of the packed package failed (the npm cache holds what \`npm ci\` of this repository fetched):\n${stderr}`);
  }
});

describe("the packed package", () => {
  it("ships its licence, its sources for the source maps, and what the README links to", () => {
    for (const file of ["LICENSE", "README.md", "package.json", "dist/src/index.js", "dist/src/index.d.ts", "dist/src/browser.js", "dist/src/browser.d.ts", "dist/src/cli/main.js", "src/index.ts"]) {
      assert.ok(shipped.has(file), `${file} is not in the tarball`);
    }
    assert.match(readFileSync(join(ROOT, "LICENSE"), "utf8"), /Apache License\s+Version 2\.0/);
    // The library, its sources and pictures; no tests, fixtures or the oracle.
    const strays = [...shipped].filter((file) => !(/^(dist\/src|src|docs\/images)\//.test(file) || ["package.json", "README.md", "LICENSE"].includes(file)));
    assert.deepEqual(strays, []);
    assert.deepEqual([...shipped].filter((file) => /fixture|reference|test/.test(file)), []);

    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    const links = [...readme.matchAll(/\]\(([^)#\s]+)\)/g)].map((match) => match[1]).filter((link) => !/^[a-z]+:/.test(link));
    assert.ok(links.length > 0);
    for (const link of links) {
      const target = posix.normalize(link).replace(/\/$/, "");
      assert.ok([...shipped].some((file) => file === target || file.startsWith(`${target}/`)), `README links to ${link}, which is not shipped`);
    }

    const maps = [...shipped].filter((file) => file.endsWith(".js.map"));
    assert.ok(maps.length > 10);
    for (const map of maps) {
      const { sources } = JSON.parse(readFileSync(join(ROOT, map), "utf8")) as { sources: string[] };
      for (const source of sources) {
        const target = normalize(join(dirname(map), source)).split("\\").join("/");
        assert.ok(shipped.has(target), `${map} points at ${source}, which is not shipped`);
      }
    }
  });

  it("installs offline without the plot and parquet packages, which stay optional peers", async () => {
    const installed = JSON.parse(readFileSync(join(app, "node_modules", "attention-sinks", "package.json"), "utf8")) as {
      peerDependencies: Record<string, string>;
      peerDependenciesMeta: Record<string, { optional: boolean }>;
      dependencies: Record<string, string>;
    };
    assert.deepEqual(installed.peerDependencies, OPTIONAL_DEPENDENCIES);
    for (const name of Object.keys(OPTIONAL_DEPENDENCIES)) {
      assert.equal(installed.peerDependenciesMeta[name]?.optional, true, name);
      assert.equal(installed.dependencies[name], undefined, name);
      assert.equal(existsSync(join(app, "node_modules", name)), false, `${name} was installed`);
    }
    // The repository itself keeps them, at the same versions, to test those features.
    const own = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { devDependencies: Record<string, string> };
    for (const [name, version] of Object.entries(OPTIONAL_DEPENDENCIES)) assert.equal(own.devDependencies[name], version, name);
  });

  it("runs its command line: --version, and generate on a model folder", async () => {
    const bin = join(app, "node_modules", ".bin", "attention-sinks");
    const manifest = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };
    const version = await inApp(bin, ["--version"]);
    assert.equal(version.stdout.trim(), `attention-sinks ${manifest.version}`);
    const generated = await inApp(bin, ["generate", "--model_name_or_path", "./model", "--prompt", "a b", "--max_new_tokens", "6", "--attention_sink_window_size", "8"]);
    assert.match(generated.stderr, /6 tokens in/);
    assert.ok(generated.stdout.startsWith("a b"), generated.stdout);
  });

  it("names the install command when a feature's optional package is missing", async () => {
    const bin = join(app, "node_modules", ".bin", "attention-sinks");
    await writeFile(join(app, "rows.parquet"), "PAR1");
    const parquet = await inApp(bin, ["perplexity", "--model_name_or_path", "./model", "--dataset_name", "rows.parquet", "--num_tokens", "20", "--output_dir", "out"]).then(
      () => assert.fail("perplexity ran without hyparquet"),
      (error: { code: number; stderr: string }) => error,
    );
    assert.equal(parquet.code, 1);
    assert.match(parquet.stderr, /needs hyparquet.*npm install -E hyparquet@1\.31\.5/);

    await writeFile(join(app, "run.csv"), "input_length,overall_ppl\n1,2\n");
    const plot = await inApp(bin, ["plot", "--output_dir", ".", "--output", "plot.png", "--skip_first", "0", "--features", "perplexity"]).then(
      () => assert.fail("plot ran without vega"),
      (error: { code: number; stderr: string }) => error,
    );
    assert.match(plot.stderr, /npm install -E vega@6\.4\.0 vega-lite@6\.4\.3 @resvg\/resvg-js@2\.6\.2 dejavu-fonts-ttf@2\.37\.3/);
    assert.equal(existsSync(join(app, "plot.png")), false);
  });

  it("compiles and runs a strict TypeScript program: forward's output is typed, and only upstream types need skipLibCheck", async () => {
    await writeFile(
      join(app, "main.ts"),
      `import { AutoModelForCausalLM, AutoTokenizer, sinkCacheStats, type Tensor } from "attention-sinks";
type IsAny<T> = 0 extends 1 & T ? true : false;
const tokenizer = await AutoTokenizer.from_pretrained("./model");
const model = await AutoModelForCausalLM.from_pretrained("./model", { attention_sink_size: 2, attention_sink_window_size: 6 });
const output = await model.forward({ ...tokenizer("a b a b a b a b a b a b") });
const logits: Tensor = output.logits;
const next = await model({ ...tokenizer("a", { add_special_tokens: false }), past_key_values: output.past_key_values });
const typed: [IsAny<typeof output>, IsAny<typeof next>] = [false, false];
console.log(JSON.stringify({ dims: logits.dims, next: next.logits.dims, typed, stats: sinkCacheStats(next.past_key_values) }));
`,
    );
    const options = { target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", strict: true, outDir: "build" };
    await writeFile(join(app, "tsconfig.json"), JSON.stringify({ compilerOptions: { ...options, skipLibCheck: true }, files: ["main.ts"] }));
    await run(process.execPath, [TSC, "-p", "."], { cwd: app });
    const { stdout } = await inApp(join("build", "main.js"), []);
    const result = JSON.parse(stdout) as { dims: number[]; next: number[]; stats: { cached_tokens: number } };
    assert.equal(result.dims[0], 1);
    assert.equal(result.next[1], 1);
    assert.equal(result.stats.cached_tokens, 8);

    // Without skipLibCheck the errors are transformers.js's and its tokenizers' own (the README says so), none ours.
    const strict = await run(process.execPath, [TSC, "-p", ".", "--skipLibCheck", "false", "--noEmit"], { cwd: app }).then(
      () => "",
      (error: { stdout: string }) => error.stdout,
    );
    const files = new Set([...strict.matchAll(/^(\S+?)\(\d+,\d+\): error/gm)].map((match) => match[1]));
    assert.ok(files.size > 0, "transformers.js's types compile without skipLibCheck now: update the README");
    for (const file of files) assert.match(file, /^node_modules\/@huggingface\//);
    await rm(join(app, "build"), { recursive: true });
  });

  it("bundles for a browser from the installed package: the browser entry, typed under the browser condition", async () => {
    await writeFile(join(app, "page.ts"), 'import { AutoModelForCausalLM, cacheStats, env } from "attention-sinks";\nenv.allowRemoteModels = false;\nconsole.log(AutoModelForCausalLM.name, cacheStats);\n');
    const { build } = await import("esbuild");
    const result = await build({ entryPoints: [join(app, "page.ts")], absWorkingDir: app, bundle: true, format: "esm", platform: "browser", write: false, metafile: true, logLevel: "silent" });
    const inputs = Object.keys(result.metafile.inputs);
    assert.ok(inputs.includes("node_modules/attention-sinks/dist/src/browser.js"), inputs.filter((path) => path.includes("attention-sinks")).join(", "));
    assert.ok(!inputs.some((path) => path.includes("onnxruntime-node")), "the bundle holds onnxruntime-node");
    // A bundler's TypeScript setup resolves the browser condition to the browser entry's declarations.
    const options = { target: "ES2022", module: "ESNext", moduleResolution: "Bundler", customConditions: ["browser"], strict: true, noEmit: true, skipLibCheck: true, traceResolution: true };
    await writeFile(join(app, "tsconfig.browser.json"), JSON.stringify({ compilerOptions: options, files: ["page.ts"] }));
    const { stdout } = await run(process.execPath, [TSC, "-p", "tsconfig.browser.json"], { cwd: app, maxBuffer: 64 << 20 });
    assert.match(stdout, /Module name 'attention-sinks' was successfully resolved to '[^']*node_modules\/attention-sinks\/dist\/src\/browser\.d\.ts'/);
  });
});

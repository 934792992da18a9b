/**
 * The llama.cpp backend through the command line: `--backend llama.cpp` on perplexity, generate and chat,
 * chosen by default for a `.gguf` model, options of the other engine refused by name, and the install
 * command when node-llama-cpp is missing. (Its agreement with onnxruntime is in llama_cpp_backend.test.ts.)
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runCli } from "./support/cli.js";
import { requireLlamaCpp, WITHOUT_NODE_LLAMA_CPP } from "./support/llama_cpp.js";
import { sharedFiles } from "./support/shared_data.js";

const STORIES_GGUF = "models/stories260K/stories260K.v1.gguf";
const TEXT = "data/tinystories_valid.txt";

/** The nll column of a perplexity CSV. */
async function nllColumn(csv: string): Promise<number[]> {
  const [header, ...rows] = (await readFile(csv, "utf8")).trim().split("\n");
  const column = header.split(",").indexOf("nll");
  assert.ok(column >= 0, `no nll column in ${header}`);
  return rows.map((row) => Number(row.split(",")[column]));
}

describe("the llama.cpp backend on the command line", () => {
  it("perplexity --backend llama.cpp matches --backend onnxruntime token for token on stories260K.v1.gguf", async (t) => {
    const files = sharedFiles(t, STORIES_GGUF, TEXT);
    if (!files || !(await requireLlamaCpp(t))) return;
    const out = await mkdtemp(join(tmpdir(), "attention-sinks-cli-llama-"));
    t.after(() => rm(out, { recursive: true, force: true }));
    const columns: number[][] = [];
    for (const backend of ["llama.cpp", "onnxruntime"]) {
      const dir = join(out, backend);
      const args = ["perplexity", "--model_name_or_path", files[0], "--dataset_name", files[1], "--num_tokens", "300", "--window_size", "64", "--output_dir", dir];
      const run = await runCli([...args, "--backend", backend, "--threads", "1"]);
      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stdout, /attention_sinks: 300 tokens, overall perplexity \d+\.\d{3}/);
      columns.push(await nllColumn(join(dir, "attention_sinks.csv")));
    }
    assert.equal(columns[0].length, 300);
    const worst = Math.max(...columns[0].map((value, i) => Math.abs(value - columns[1][i])));
    assert.ok(worst < 1e-4, `max |d nll| ${worst}`);
  });

  it("a .gguf model runs on llama.cpp by default; onnxruntime's options then ask for --backend onnxruntime", async (t) => {
    const files = sharedFiles(t, STORIES_GGUF);
    if (!files || !(await requireLlamaCpp(t))) return;
    const generate = ["generate", "--model_name_or_path", files[0], "--prompt", "Once upon a time", "--max_new_tokens", "20", "--window_size", "64", "--threads", "1"];
    const refused = await runCli([...generate, "--dtype", "fp32"]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /--dtype applies only to --backend onnxruntime; this model runs on llama\.cpp/);
    const other = await runCli([...generate, "--backend", "onnxruntime", "--kv_cache_type", "f16"]);
    assert.equal(other.code, 2, other.stderr);
    assert.match(other.stderr, /--kv_cache_type applies only to --backend llama\.cpp; this model runs on onnxruntime/);

    // Greedy text is the same on both engines.
    const texts: string[] = [];
    for (const backend of [[], ["--backend", "onnxruntime"]]) {
      const run = await runCli([...generate, ...backend]);
      assert.equal(run.code, 0, run.stderr);
      texts.push(run.stdout);
    }
    assert.ok(texts[0].startsWith("Once upon a time"), texts[0]);
    assert.equal(texts[0], texts[1]);
  });

  it("chat --backend llama.cpp answers several turns on one bounded cache", async (t) => {
    const files = sharedFiles(t, STORIES_GGUF);
    if (!files || !(await requireLlamaCpp(t))) return;
    const run = await runCli(
      ["chat", "--model_name_or_path", files[0], "--backend", "llama.cpp", "--window_size", "64", "--max_new_tokens", "30", "--threads", "1"],
      { input: "Once upon a time\nThe cat said\nThen they\n/exit\n" },
    );
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, /cache: 64 of \d+ tokens attended/);
  });

  it("without node-llama-cpp, --backend llama.cpp exits 1 naming the install command", async (t) => {
    const files = sharedFiles(t, STORIES_GGUF);
    if (!files) return;
    const run = await runCli(["generate", "--model_name_or_path", files[0], "--prompt", "Once", "--max_new_tokens", "2"], {
      env: { NODE_OPTIONS: `--import=${WITHOUT_NODE_LLAMA_CPP}` },
    });
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /needs node-llama-cpp, an optional dependency that is not installed: run `npm install node-llama-cpp@3\.21\.1` \(or use the onnxruntime backend\)/);
  });
});

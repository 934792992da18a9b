/**
 * Broken model directories are refused before transformers.js reads them, naming the file and what is wrong:
 * empty or truncated JSON, a missing tokenizer file, an empty vocabulary, and named pipes (which would block
 * a reader for ever).
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AutoTokenizer, ConversionError, convertCheckpoint } from "../src/index.js";
import { loadTransformersBackend } from "../src/transformers/backend.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";

const root = await mkdtemp(join(tmpdir(), "attention-sinks-model-dir-"));
after(() => rm(root, { recursive: true, force: true }));
const original = join(root, "model");
await writeTinyTextModel(original, "llama", { seed: 1 });

async function broken(name: string, change: (dir: string) => Promise<void>): Promise<string> {
  const dir = join(root, name);
  await cp(original, dir, { recursive: true });
  await change(dir);
  return dir;
}

/** A named pipe in place of `file` (nothing ever writes to it). */
async function pipe(dir: string, file: string): Promise<void> {
  await rm(join(dir, file));
  execFileSync("mkfifo", [join(dir, file)]);
}

describe("model directories checked before transformers.js reads them", () => {
  const cases: [string, (dir: string) => Promise<void>, RegExp][] = [
    ["empty config", (dir) => writeFile(join(dir, "config.json"), ""), /config\.json: is empty/],
    ["truncated config", async (dir) => writeFile(join(dir, "config.json"), (await readFile(join(dir, "config.json"), "utf8")).slice(0, 40)), /config\.json: is not valid JSON/],
    ["config array", (dir) => writeFile(join(dir, "config.json"), "[1, 2]"), /config\.json: is not a JSON object/],
    ["empty tokenizer", (dir) => writeFile(join(dir, "tokenizer.json"), ""), /tokenizer\.json: is empty/],
    ["no tokenizer config", (dir) => rm(join(dir, "tokenizer_config.json")), /tokenizer_config\.json: is missing/],
    [
      "empty vocabulary",
      async (dir) => {
        const tokenizer = JSON.parse(await readFile(join(dir, "tokenizer.json"), "utf8")) as { model: { vocab: unknown } };
        tokenizer.model.vocab = {};
        await writeFile(join(dir, "tokenizer.json"), JSON.stringify(tokenizer));
      },
      /tokenizer\.json: has no vocabulary/,
    ],
    ["config pipe", (dir) => pipe(dir, "config.json"), /config\.json: is not a regular file/],
    ["tokenizer pipe", (dir) => pipe(dir, "tokenizer.json"), /tokenizer\.json: is not a regular file/],
  ];

  it("the intact fixture loads", async () => {
    const backend = await loadTransformersBackend(original);
    assert.ok(backend.tokenizer.encode("the cat").length > 1);
  });

  for (const [name, change, message] of cases) {
    it(`${name}: a ConversionError naming the file`, async () => {
      const dir = await broken(name.replaceAll(" ", "-"), change);
      await assert.rejects(loadTransformersBackend(dir), (error: Error) => error instanceof ConversionError && message.test(error.message) && error.message.startsWith(dir));
      if (name.includes("tokenizer") || name.includes("vocabulary")) {
        await assert.rejects(AutoTokenizer.from_pretrained(dir), (error: Error) => error instanceof ConversionError && message.test(error.message));
      }
    });
  }

  it("a named pipe given as a checkpoint is refused without opening it", async () => {
    const fifo = join(root, "checkpoint.bin");
    execFileSync("mkfifo", [fifo]);
    await assert.rejects(convertCheckpoint(fifo, join(root, "out")), /checkpoint\.bin: is not a regular file/);
  });
});

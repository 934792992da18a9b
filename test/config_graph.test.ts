/**
 * A model directory whose config.json does not describe its graph (layers, KV heads, head size) is refused
 * when it loads, naming the field and both values, before anything is sized from the config.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EXPERIMENTS } from "../src/backend/experiments.js";
import { loadTransformersBackend } from "../src/transformers/backend.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";

const root = await mkdtemp(join(tmpdir(), "attention-sinks-config-graph-"));
after(() => rm(root, { recursive: true, force: true }));
const original = join(root, "model");
const model = await writeTinyTextModel(original, "llama", { seed: 1 });

/** A copy of the fixture whose config.json has `changes` applied. */
async function withConfig(name: string, changes: Record<string, number>): Promise<string> {
  const dir = join(root, name);
  await cp(original, dir, { recursive: true });
  const config = JSON.parse(await readFile(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
  await writeFile(join(dir, "config.json"), JSON.stringify({ ...config, ...changes }));
  return dir;
}

describe("config.json against the graph", () => {
  const { num_layers, num_kv_heads, head_dim, num_heads } = model.spec;
  const cases: [string, Record<string, number>, RegExp][] = [
    ["layers", { num_hidden_layers: 1e9 }, new RegExp(`layer count \\(num_hidden_layers\\) is 1000000000, but the model's graph has ${num_layers}`)],
    ["kv-heads", { num_key_value_heads: num_kv_heads * 2 }, new RegExp(`key/value head count is ${num_kv_heads * 2}, but the model's graph has ${num_kv_heads}`)],
    ["head-dim", { head_dim: head_dim * 2 }, new RegExp(`head size \\(head_dim\\) is ${head_dim * 2}, but the model's graph has ${head_dim}`)],
  ];

  it("loads the fixture as it is, in every experiment", async () => {
    for (const experiment of EXPERIMENTS) {
      const backend = await loadTransformersBackend(original, { experiment });
      assert.equal((await backend.feed([1, 2])).length, model.spec.vocab_size);
    }
    assert.ok(num_heads >= num_kv_heads);
  });

  for (const [name, changes, message] of cases) {
    it(`refuses a config with the wrong ${name}, in every experiment, at once`, async () => {
      const dir = await withConfig(name, changes);
      for (const experiment of EXPERIMENTS) {
        const started = performance.now();
        await assert.rejects(loadTransformersBackend(dir, { experiment }), message, experiment);
        // Generous: a config sized for a billion layers took 30 s and 2.5 GB before it was refused.
        assert.ok(performance.now() - started < 10_000, `${experiment} took ${performance.now() - started} ms`);
      }
    });
  }
});

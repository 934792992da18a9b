/**
 * What a bundler makes of `import ... from "attention-sinks"` for a browser: the browser entry through the
 * export condition, no Node module anywhere in its graph, and no runtime import of onnxruntime-common or
 * onnxruntime-node by the package's own modules (transformers.js's web build brings its runtime).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { build, type Metafile } from "esbuild";
import { repositoryRoot } from "./support/shared_data.js";

async function browserBundle(contents: string): Promise<{ text: string; metafile: Metafile }> {
  const result = await build({
    stdin: { contents, resolveDir: repositoryRoot(), loader: "js" },
    bundle: true,
    format: "esm",
    platform: "browser",
    write: false,
    metafile: true,
    logLevel: "silent",
  });
  return { text: result.outputFiles[0].text, metafile: result.metafile };
}

test("a browser bundle of the package takes the browser entry, whose graph has no Node module and no second onnxruntime", async () => {
  const { metafile } = await browserBundle('export { AutoModelForCausalLM, pipeline, cacheStats, env } from "attention-sinks";');
  const own = Object.keys(metafile.inputs).filter((path) => path.startsWith("dist/src/"));
  assert.ok(own.includes("dist/src/browser.js"), `the bundle holds ${own.join(", ")}`);
  assert.ok(!own.includes("dist/src/index.js"), "the bundle took the Node entry");
  for (const path of own) {
    for (const { path: imported } of metafile.inputs[path].imports) {
      assert.ok(!/^node:|onnxruntime-(common|node)/.test(imported), `${path} imports ${imported}`);
      assert.ok(!imported.includes("/convert/") && !imported.includes("/perplexity/"), `${path} imports ${imported}, a Node-only feature`);
    }
  }
});

test("the browser entry is the Node entry less the Node-only features", async () => {
  const browser = Object.keys(await import("../src/browser.js"));
  const node = new Set(Object.keys(await import("../src/index.js")));
  assert.deepEqual(browser.filter((name) => !node.has(name)), []);
  for (const nodeOnly of ["convertCheckpoint", "resolveModelSource", "runPerplexity", "writePlot", "loadLlamaCppBackend", "loadTransformersBackend"]) {
    assert.ok(node.has(nodeOnly) && !browser.includes(nodeOnly), nodeOnly);
  }
  await assert.rejects(browserBundle('export { convertCheckpoint } from "attention-sinks";'), /No matching export/);
});

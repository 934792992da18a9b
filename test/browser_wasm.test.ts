/**
 * The browser entry streaming in headless Chromium on onnxruntime-web's wasm, bundled by esbuild, Vite and
 * webpack, and loaded unbundled through an import map: the same greedy text as Node's `cpu` device on the same model, a cache
 * bounded by sink + window over a stream several times longer, and no request leaving 127.0.0.1.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import * as api from "../src/index.js";
import { CHROMIUM_PACKAGE, openPage } from "./support/browser/chromium.js";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { APP_BUNDLERS, bundle, modulePage, ORT_FOLDER, type Site } from "./support/browser/site.js";
import { greedyStream, pipelineGreedy, type GreedyStreamRequest, type GreedyStreamResult } from "./support/browser/greedy_stream.js";
import { repositoryRoot, sharedFiles } from "./support/shared_data.js";
import { systemProgram } from "./support/system_package.js";

const SINKS = 4;
const WINDOW = 60;
const NEW_TOKENS = 5 * (SINKS + WINDOW);
/** `pipeline("text-generation")` past the cache too. */
const PIPELINE_TOKENS = 2 * (SINKS + WINDOW);
const REQUEST = { prompt: "Once upon a time", new_tokens: NEW_TOKENS, attention_sink_size: SINKS, attention_sink_window_size: WINDOW };

/** The page's stream against Node's on the same converted model. */
async function streamsLikeNode(t: TestContext, page: (folder: string) => Promise<Site>): Promise<void> {
  const chromium = systemProgram(t, "chromium", CHROMIUM_PACKAGE);
  const [checkpoint] = sharedFiles(t, "models/tinystories-656k") ?? [];
  if (!chromium || !checkpoint) return;
  const folder = await api.resolveModelSource(checkpoint);
  const node = await greedyStream(api, { ...REQUEST, model: folder, device: "cpu" });
  const browser = await openPage({ chromium, site: await page(folder) });
  t.after(() => browser.close());
  const inPage = await browser.page
    .evaluate(
      (r: GreedyStreamRequest) => (globalThis as unknown as { greedyStream(r: GreedyStreamRequest): Promise<GreedyStreamResult> }).greedyStream(r),
      { ...REQUEST, model: "tinystories", device: "wasm" },
    )
    .catch((error: unknown) => assert.fail(`the page failed: ${String(error)}\n${browser.console.join("\n")}`));

  const pipelined = await browser.page.evaluate(
    (r: GreedyStreamRequest) => (globalThis as unknown as { pipelineGreedy(r: GreedyStreamRequest): Promise<string> }).pipelineGreedy(r),
    { ...REQUEST, new_tokens: PIPELINE_TOKENS, model: "tinystories", device: "wasm" },
  );
  assert.ok(pipelined.startsWith(REQUEST.prompt) && pipelined.length > REQUEST.prompt.length + 100, pipelined);
  assert.equal(pipelined, await pipelineGreedy(api, { ...REQUEST, new_tokens: PIPELINE_TOKENS, model: folder, device: "cpu" }), "pipeline() in the page and in Node");
  assert.equal(inPage.text, node.text);
  assert.deepEqual(inPage.ids, node.ids);
  assert.equal(inPage.max_cached_tokens, SINKS + WINDOW, `the cache held up to ${inPage.max_cached_tokens} tokens; sink + window is ${SINKS + WINDOW}`);
  assert.ok(inPage.seen_tokens >= NEW_TOKENS, `the stream saw ${inPage.seen_tokens} tokens`);
  assert.equal(inPage.kv_cache_bytes, node.kv_cache_bytes);
  assert.ok(browser.served.includes("/models/tinystories/onnx/model.onnx"), `the model came from the test's server: ${browser.served.join(", ")}`);
  assert.ok(browser.served.some((path) => path.startsWith("/ort/") && path.endsWith(".wasm")), "onnxruntime-web's wasm came from the test's server");
  assert.deepEqual(browser.outside, [], "requests left 127.0.0.1");
  t.diagnostic(`node cpu ${node.tokens_per_second.toFixed(0)} tokens/s, chromium wasm ${inPage.tokens_per_second.toFixed(0)} tokens/s`);
}

test("bundled by esbuild, wasm in Chromium streams Node's greedy text in a bounded cache, offline", { timeout: 180_000 }, (t) =>
  streamsLikeNode(t, async (folder) => ({
    folders: { ...ORT_FOLDER, "/models/tinystories/": folder },
    files: {
      "/": { type: "text/html", body: modulePage("/page.js") },
      "/page.js": { type: "text/javascript", body: await bundle("dist/test/support/browser/page.js") },
    },
  })),
);

for (const [name, bundleInto] of Object.entries(APP_BUNDLERS)) {
  test(`bundled by ${name}, wasm in Chromium streams Node's greedy text in a bounded cache, offline`, { timeout: 300_000 }, (t) =>
    streamsLikeNode(t, async (folder) => {
      const dir = await mkdtemp(join(tmpdir(), `attention-sinks-${name}-`));
      t.after(() => rm(dir, { recursive: true, force: true }));
      await bundleInto("dist/test/support/browser/page.js", dir);
      return {
        folders: { ...ORT_FOLDER, "/models/tinystories/": folder, "/app/": dir },
        files: { "/": { type: "text/html", body: modulePage("/app/page.js") } },
      };
    }),
  );
}

test("unbundled, through an import map, wasm in Chromium streams Node's greedy text", { timeout: 180_000 }, (t) =>
  streamsLikeNode(t, async (folder) => {
    const root = repositoryRoot();
    // As a page would serve node_modules: the package's browser entry and transformers.js's self-contained web build.
    const imports = { "attention-sinks": "/attention-sinks/browser.js", "@huggingface/transformers": "/transformers/transformers.js" };
    const html = `<!doctype html><html><head><meta charset="utf-8"><script type="importmap">${JSON.stringify({ imports })}</script></head><body><script type="module" src="/test/page.js"></script></body></html>`;
    return {
      folders: {
        ...ORT_FOLDER,
        "/models/tinystories/": folder,
        "/attention-sinks/": join(root, "dist", "src"),
        "/transformers/": join(root, "node_modules", "@huggingface", "transformers", "dist"),
        "/test/": join(root, "dist", "test", "support", "browser"),
      },
      files: { "/": { type: "text/html", body: html } },
    };
  }),
);

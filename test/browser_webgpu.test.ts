/**
 * WebGPU in headless Chromium (`--enable-unsafe-webgpu`: a software adapter on a machine without a GPU):
 * transformers.js keeps the presents on the device there, and the stream still matches wasm over a stream
 * four times the cache: logit for logit within float tolerance on a tiny random model, and the same greedy
 * text on TinyStories.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { CHROMIUM_PACKAGE, openPage } from "./support/browser/chromium.js";
import { bundle, modulePage, ORT_FOLDER } from "./support/browser/site.js";
import type { GreedyStreamRequest, GreedyStreamResult } from "./support/browser/greedy_stream.js";
import { resolveModelSource } from "../src/index.js";
import { writeTinyModel } from "./support/fixtures/tiny_models.js";
import { sharedFiles } from "./support/shared_data.js";
import { systemProgram } from "./support/system_package.js";

const SINKS = 2;
const WINDOW = 6;
const NEW_TOKENS = 4 * (SINKS + WINDOW);
/**
 * fp32 on both sides, but the software adapter's kernels round otherwise than wasm's: the prompt's own pass
 * already differs by about 2e-4 on logits of magnitude 2 to 4 here, and later steps (evicting, sinks moved)
 * stay within 7e-4 without growing. A cache that went wrong would differ by whole units.
 */
const LOGIT_TOLERANCE = 2e-3;

/** A page with WebGPU serving one model folder; streams on it run on either device. */
async function webgpuPage(t: TestContext, chromium: string, name: string, folder: string) {
  const browser = await openPage({
    chromium,
    webgpu: true,
    site: {
      folders: { ...ORT_FOLDER, [`/models/${name}/`]: folder },
      files: {
        "/": { type: "text/html", body: modulePage("/page.js") },
        "/page.js": { type: "text/javascript", body: await bundle("dist/test/support/browser/page.js") },
      },
    },
  });
  t.after(() => browser.close());
  const run = (request: Omit<GreedyStreamRequest, "model">) =>
    browser.page
      .evaluate(
        (r: GreedyStreamRequest) => (globalThis as unknown as { greedyStream(r: GreedyStreamRequest): Promise<GreedyStreamResult> }).greedyStream(r),
        { ...request, model: name },
      )
      .catch((error: unknown) => assert.fail(`the page failed on ${request.device}: ${String(error)}\n${browser.console.join("\n")}`));
  return { browser, run };
}

test("WebGPU streams the same logits as wasm, with the cache bounded, offline", { timeout: 240_000 }, async (t) => {
  const chromium = systemProgram(t, "chromium", CHROMIUM_PACKAGE);
  if (!chromium) return;
  const folder = await mkdtemp(join(tmpdir(), "attention-sinks-webgpu-"));
  t.after(() => rm(folder, { recursive: true, force: true }));
  await writeTinyModel(folder, "llama", { seed: 3 });
  const { browser, run } = await webgpuPage(t, chromium, "tiny-llama", folder);
  const request = { prompt: [1, 5, 9], new_tokens: NEW_TOKENS, attention_sink_size: SINKS, attention_sink_window_size: WINDOW, keep_logits: true };
  const wasm = await run({ ...request, device: "wasm" });
  const webgpu = await run({ ...request, device: "webgpu" });

  assert.equal(webgpu.logits!.length, NEW_TOKENS);
  let worst = 0;
  webgpu.logits!.forEach((row, step) => row.forEach((value, v) => (worst = Math.max(worst, Math.abs(value - wasm.logits![step][v])))));
  assert.ok(worst <= LOGIT_TOLERANCE, `WebGPU's logits differ from wasm's by up to ${worst}`);
  assert.deepEqual(webgpu.ids, wasm.ids);
  assert.equal(webgpu.max_cached_tokens, SINKS + WINDOW);
  assert.equal(webgpu.kv_cache_bytes, wasm.kv_cache_bytes);
  assert.deepEqual(browser.outside, [], "requests left 127.0.0.1");
  t.diagnostic(`largest logit difference ${worst.toExponential(2)}; wasm ${wasm.tokens_per_second.toFixed(0)} tokens/s, WebGPU ${webgpu.tokens_per_second.toFixed(1)} tokens/s`);
});

test("WebGPU writes wasm's greedy text on a trained model over a stream four times the cache", { timeout: 240_000 }, async (t) => {
  const chromium = systemProgram(t, "chromium", CHROMIUM_PACKAGE);
  const [checkpoint] = sharedFiles(t, "models/tinystories-656k") ?? [];
  if (!chromium || !checkpoint) return;
  const { browser, run } = await webgpuPage(t, chromium, "tinystories", await resolveModelSource(checkpoint));
  // A small cache keeps the software adapter's stream short.
  const request = { prompt: "Once upon a time", new_tokens: 4 * 16, attention_sink_size: 4, attention_sink_window_size: 12 };
  const wasm = await run({ ...request, device: "wasm" });
  const webgpu = await run({ ...request, device: "webgpu" });
  assert.equal(webgpu.text, wasm.text);
  assert.equal(webgpu.max_cached_tokens, 16);
  assert.deepEqual(browser.outside, [], "requests left 127.0.0.1");
  t.diagnostic(`wasm ${wasm.tokens_per_second.toFixed(0)} tokens/s, WebGPU ${webgpu.tokens_per_second.toFixed(1)} tokens/s`);
});

/**
 * WebGPU in headless Chromium (`--enable-unsafe-webgpu`: a software adapter on a machine without a GPU):
 * transformers.js keeps the presents on the device there, and the stream still matches wasm, logit for logit
 * within float tolerance, over a stream four times the cache.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { bundle, CHROMIUM_PACKAGE, modulePage, openPage, ORT_FOLDER } from "./support/browser/harness.js";
import type { GreedyStreamRequest, GreedyStreamResult } from "./support/browser/greedy_stream.js";
import { writeTinyModel } from "./support/fixtures/tiny_models.js";
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

test("WebGPU streams the same logits as wasm, with the cache bounded, offline", { timeout: 240_000 }, async (t) => {
  const chromium = systemProgram(t, "chromium", CHROMIUM_PACKAGE);
  if (!chromium) return;
  const folder = await mkdtemp(join(tmpdir(), "attention-sinks-webgpu-"));
  t.after(() => rm(folder, { recursive: true, force: true }));
  await writeTinyModel(folder, "llama", { seed: 3 });
  const browser = await openPage({
    chromium,
    webgpu: true,
    site: {
      folders: { ...ORT_FOLDER, "/models/tiny-llama/": folder },
      files: {
        "/": { type: "text/html", body: modulePage("/page.js") },
        "/page.js": { type: "text/javascript", body: await bundle("dist/test/support/browser/page.js") },
      },
    },
  });
  t.after(() => browser.close());
  const request = { model: "tiny-llama", prompt: [1, 5, 9], new_tokens: NEW_TOKENS, attention_sink_size: SINKS, attention_sink_window_size: WINDOW, keep_logits: true };
  const run = (device: string) =>
    browser.page
      .evaluate(
        (r: GreedyStreamRequest) => (globalThis as unknown as { greedyStream(r: GreedyStreamRequest): Promise<GreedyStreamResult> }).greedyStream(r),
        { ...request, device },
      )
      .catch((error: unknown) => assert.fail(`the page failed on ${device}: ${String(error)}\n${browser.console.join("\n")}`));
  const wasm = await run("wasm");
  const webgpu = await run("webgpu");

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

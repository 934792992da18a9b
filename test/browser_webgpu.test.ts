/**
 * WebGPU in headless Chromium (`--enable-unsafe-webgpu`: a software adapter on a machine without a GPU):
 * transformers.js keeps the presents on the device there, and the stream still matches wasm over a stream
 * four times the cache: logit for logit within float tolerance on a tiny random model, and the same greedy
 * text on TinyStories. Exporters' graphs download the whole cache every step (the baseline); the package's own
 * graphs keep it on the device, and a step moves no cache bytes.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { CHROMIUM_PACKAGE, openPage } from "./support/browser/chromium.js";
import { bundle, modulePage, ORT_FOLDER } from "./support/browser/site.js";
import type { GpuTransfers, GreedyStreamRequest, GreedyStreamResult } from "./support/browser/greedy_stream.js";
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
/**
 * Kept on the device, the sink and window keys are also rotated there, by the adapter's Cos and Sin (WGSL
 * promises 2^-11 absolute): over 64 steps here the difference from wasm stays within 2.3e-3 without growing,
 * where the downloading stream reaches 1.8e-3. A slot or rotation gone wrong differs by whole units.
 */
const DEVICE_LOGIT_TOLERANCE = 5e-3;

/** A page with WebGPU serving model folders by name; streams on it run on either device. */
async function webgpuPage(t: TestContext, chromium: string, models: Record<string, string>) {
  const folders = Object.fromEntries(Object.entries(models).map(([name, folder]) => [`/models/${name}/`, folder]));
  const browser = await openPage({
    chromium,
    webgpu: true,
    site: {
      folders: { ...ORT_FOLDER, ...folders },
      files: {
        "/": { type: "text/html", body: modulePage("/page.js") },
        "/page.js": { type: "text/javascript", body: await bundle("dist/test/support/browser/page.js") },
      },
    },
  });
  t.after(() => browser.close());
  const run = (request: Omit<GreedyStreamRequest, "model">, model = Object.keys(models)[0]) =>
    browser.page
      .evaluate(
        (r: GreedyStreamRequest) => (globalThis as unknown as { greedyStream(r: GreedyStreamRequest): Promise<GreedyStreamResult> }).greedyStream(r),
        { ...request, model },
      )
      .catch((error: unknown) => assert.fail(`the page failed on ${model}, ${request.device}: ${String(error)}\n${browser.console.join("\n")}`));
  return { browser, run };
}

test("WebGPU streams the same logits as wasm, with the cache bounded, offline", { timeout: 240_000 }, async (t) => {
  const chromium = systemProgram(t, "chromium", CHROMIUM_PACKAGE);
  if (!chromium) return;
  const folder = await mkdtemp(join(tmpdir(), "attention-sinks-webgpu-"));
  t.after(() => rm(folder, { recursive: true, force: true }));
  await writeTinyModel(folder, "llama", { seed: 3 });
  const { browser, run } = await webgpuPage(t, chromium, { "tiny-llama": folder });
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
  const { browser, run } = await webgpuPage(t, chromium, { tinystories: await resolveModelSource(checkpoint) });
  // A small cache keeps the software adapter's stream short.
  const request = { prompt: "Once upon a time", new_tokens: 4 * 16, attention_sink_size: 4, attention_sink_window_size: 12 };
  const wasm = await run({ ...request, device: "wasm" });
  const webgpu = await run({ ...request, device: "webgpu" });
  assert.equal(webgpu.text, wasm.text);
  assert.equal(webgpu.max_cached_tokens, 16);
  assert.deepEqual(browser.outside, [], "requests left 127.0.0.1");
  t.diagnostic(`wasm ${wasm.tokens_per_second.toFixed(0)} tokens/s, WebGPU ${webgpu.tokens_per_second.toFixed(1)} tokens/s`);
});

test("the package's own graphs keep the cache on the GPU: a step moves its logits and inputs, no cache bytes", { timeout: 300_000 }, async (t) => {
  const chromium = systemProgram(t, "chromium", CHROMIUM_PACKAGE);
  if (!chromium) return;
  const folder = await mkdtemp(join(tmpdir(), "attention-sinks-webgpu-device-"));
  t.after(() => rm(folder, { recursive: true, force: true }));
  // The same weights as exporters write them, and able to return the new keys and values alone.
  await writeTinyModel(join(folder, "whole"), "llama", { seed: 5 });
  await writeTinyModel(join(folder, "new-only"), "llama", { seed: 5, new_kv_only: true });
  const { browser, run } = await webgpuPage(t, chromium, { "new-only": join(folder, "new-only"), whole: join(folder, "whole") });
  const [sinks, window] = [2, 14];
  const request = { prompt: [1, 5, 9, 3], new_tokens: 4 * (sinks + window), attention_sink_size: sinks, attention_sink_window_size: window, keep_logits: true };
  const wasm = await run({ ...request, device: "wasm" }, "new-only");
  const device = await run({ ...request, device: "webgpu" }, "new-only");
  const baseline = await run({ ...request, device: "webgpu" }, "whole");

  let worst = 0;
  device.logits!.forEach((row, step) => row.forEach((value, v) => (worst = Math.max(worst, Math.abs(value - wasm.logits![step][v])))));
  assert.ok(worst <= DEVICE_LOGIT_TOLERANCE, `the device-resident stream's logits differ from wasm's by up to ${worst}`);
  assert.deepEqual(device.ids, wasm.ids);
  assert.equal(device.max_cached_tokens, sinks + window);
  // One layer's cached keys: any download or upload of cache data would be at least one layer's keys or
  // values (the baseline moves every layer's, both ways, each step). Kernel parameters, ids, mask and logits
  // are far smaller.
  const layerBytes = device.kv_cache_bytes / (2 * 2);
  const largest = (r: GreedyStreamResult) => Math.max(...r.decode_transfers!.downloads, ...r.decode_transfers!.uploads);
  const perToken = (r: GreedyStreamResult, kind: keyof GpuTransfers) => r.decode_transfers![kind].reduce((a, b) => a + b, 0) / (request.new_tokens - 1);
  assert.ok(largest(device) < layerBytes, `a device-resident step moved ${largest(device)} bytes at once; one layer's keys are ${layerBytes}`);
  assert.ok(perToken(device, "downloads") <= 64 * 4, `a device-resident step downloaded ${perToken(device, "downloads")} bytes; its logits are ${64 * 4}`);
  assert.ok(largest(baseline) >= layerBytes && perToken(baseline, "downloads") >= device.kv_cache_bytes, "the downloading baseline moves the cache, as the counter must see");
  assert.deepEqual(browser.outside, [], "requests left 127.0.0.1");
  t.diagnostic(
    `largest logit difference ${worst.toExponential(2)}; downloaded per token: ${perToken(device, "downloads").toFixed(0)} bytes kept on the device, ` +
      `${perToken(baseline, "downloads").toFixed(0)} downloading (cache ${device.kv_cache_bytes}); uploaded ${perToken(device, "uploads").toFixed(0)} and ${perToken(baseline, "uploads").toFixed(0)}; ` +
      `WebGPU ${device.tokens_per_second.toFixed(1)} tokens/s kept on the device, ${baseline.tokens_per_second.toFixed(1)} downloading`,
  );
});

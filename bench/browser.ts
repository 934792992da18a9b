/**
 * Decode speed of one model in Node and in headless Chromium, on the same stream:
 *
 *   npm run bench:browser [-- --model ../shared/models/tinystories-656k --tokens 256 --sinks 4 --window 124 --runs 3]
 *
 * Node's `cpu` device (onnxruntime-node), Chromium's wasm (onnxruntime-web, served cross-origin isolated so
 * it may use threads; its default is half the cores, at most 4) and Chromium's WebGPU (on a machine without a GPU, the software adapter
 * `--enable-unsafe-webgpu` gives; WebGPU runs the download baseline, see src/transformers/presents.ts).
 * Each run is a fresh load and a greedy stream of --tokens tokens from "Once upon a time"; tokens/s is over
 * the steps after the prompt's. Runtimes alternate run by run, so a busy machine slows them alike. The greedy
 * ids of every run are compared with Node's.
 */
import { parseArgs } from "node:util";
import * as api from "../src/index.js";
import { openPage, type BrowserPage } from "../test/support/browser/chromium.js";
import { bundle, modulePage, ORT_FOLDER } from "../test/support/browser/site.js";
import { greedyStream, type GreedyStreamRequest, type GreedyStreamResult } from "../test/support/browser/greedy_stream.js";
import { mean, median } from "./stats.js";

const { values } = parseArgs({
  options: {
    model: { type: "string", default: "../shared/models/tinystories-656k" },
    tokens: { type: "string", default: "256" },
    sinks: { type: "string", default: "4" },
    window: { type: "string", default: "124" },
    runs: { type: "string", default: "3" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
  },
});
const folder = await api.resolveModelSource(values.model);
const request = {
  prompt: "Once upon a time",
  new_tokens: Number(values.tokens),
  attention_sink_size: Number(values.sinks),
  attention_sink_window_size: Number(values.window),
};
const site = {
  folders: { ...ORT_FOLDER, "/models/bench/": folder },
  files: {
    "/": { type: "text/html", body: modulePage("/page.js") },
    "/page.js": { type: "text/javascript", body: await bundle("dist/test/support/browser/page.js") },
  },
};

async function inPage(browser: BrowserPage, device: string): Promise<GreedyStreamResult> {
  return browser.page.evaluate(
    (r: GreedyStreamRequest) => (globalThis as unknown as { greedyStream(r: GreedyStreamRequest): Promise<GreedyStreamResult> }).greedyStream(r),
    { ...request, model: "bench", device },
  );
}

const wasmPage = await openPage({ chromium: values.chromium, site });
const webgpuPage = await openPage({ chromium: values.chromium, site, webgpu: true });
const runtimes: [string, () => Promise<GreedyStreamResult>][] = [
  ["Node, cpu (onnxruntime-node)", () => greedyStream(api, { ...request, model: folder, device: "cpu" })],
  ["Chromium, wasm (onnxruntime-web)", () => inPage(wasmPage, "wasm")],
  ["Chromium, WebGPU (software adapter)", () => inPage(webgpuPage, "webgpu")],
];
const speeds = runtimes.map(() => [] as number[]);
let reference: number[] | null = null;
const mismatches: string[] = [];
for (let run = 0; run < Number(values.runs); run++) {
  for (const [i, [name, stream]] of runtimes.entries()) {
    const result = await stream();
    speeds[i].push(result.tokens_per_second);
    reference ??= result.ids;
    if (result.ids.join() !== reference.join()) mismatches.push(`${name} (run ${run + 1})`);
    if (result.max_cached_tokens > request.attention_sink_size + request.attention_sink_window_size) mismatches.push(`${name}: cache over sink + window`);
  }
}
const threads = await wasmPage.page.evaluate(() => (globalThis as unknown as { wasmThreads(): number | undefined }).wasmThreads());
await wasmPage.close();
await webgpuPage.close();

console.log(`${values.model}: ${request.new_tokens} greedy tokens, ${request.attention_sink_size} sink + ${request.attention_sink_window_size} window, ${values.runs} runs each (wasm threads: ${threads})`);
console.log("| runtime | tokens/s, median | mean | runs |");
console.log("|---|---:|---:|---|");
for (const [i, [name]] of runtimes.entries()) {
  console.log(`| ${name} | ${median(speeds[i]).toFixed(1)} | ${mean(speeds[i]).toFixed(1)} | ${speeds[i].map((speed) => speed.toFixed(1)).join(", ")} |`);
}
console.log(mismatches.length === 0 ? "greedy ids: identical across runtimes and runs" : `DIFFERENT greedy ids or cache: ${mismatches.join("; ")}`);
if (mismatches.length > 0) process.exitCode = 1;

/**
 * The demo page in headless Chromium: a model folder picked in its file input streams from the Web Worker,
 * the sink cache stays at sink + window while plain transformers.js's grows, both are charted, and no
 * request leaves 127.0.0.1.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { resolveModelSource } from "../src/index.js";
import { demoSite } from "../demo/site.js";
import type { ElementHandle } from "puppeteer-core";
import { CHROMIUM_PACKAGE, openPage } from "./support/browser/chromium.js";
import { sharedFiles } from "./support/shared_data.js";
import { systemProgram } from "./support/system_package.js";

const SINKS = 4;
const WINDOW = 60;
const PLAIN_TOKENS = 256;
/** Tokens the sink stream must see: several times its cache. */
const STREAMED = 5 * (SINKS + WINDOW);

test("the demo streams from its worker with a flat sink cache beside a growing plain one, offline", { timeout: 180_000 }, async (t) => {
  const chromium = systemProgram(t, "chromium", CHROMIUM_PACKAGE);
  const [checkpoint] = sharedFiles(t, "models/tinystories-656k") ?? [];
  if (!chromium || !checkpoint) return;
  const folder = await resolveModelSource(checkpoint);
  const browser = await openPage({ chromium, site: await demoSite() });
  t.after(() => browser.close());
  const { page } = browser;
  const input = (await page.$("#folder")) as ElementHandle<HTMLInputElement>;
  await input.uploadFile(folder); // the folder itself, as picking it in the directory input gives it
  assert.match(await page.$eval("#status", (line) => line.textContent ?? ""), /files picked/);
  for (const [id, value] of [["sinks", SINKS], ["window", WINDOW], ["plain", PLAIN_TOKENS]] as const) {
    await page.$eval(`#${id}`, (field, v) => ((field as HTMLInputElement).value = String(v)), value);
  }
  await page.click("#start");
  const seen = (name: string) => page.$eval(`#${name}-seen`, (cell) => Number(cell.textContent!.replaceAll(",", "")));
  // Streamed far enough, or failed (the status line then says why).
  await page.waitForFunction(
    (n: number) => Number(document.getElementById("sinks-seen")!.textContent!.replaceAll(",", "")) >= n || document.getElementById("status")!.textContent!.startsWith("Error"),
    { timeout: 120_000 },
    STREAMED,
  );
  const status = await page.$eval("#status", (line) => line.textContent ?? "");
  assert.ok(!status.startsWith("Error"), `the demo failed: ${status}\n${browser.console.join("\n")}`);
  await page.click("#stop");
  await page.waitForFunction(() => document.getElementById("status")!.textContent!.includes("Stopped"), { timeout: 30_000 });

  const cell = (id: string) => page.$eval(`#${id}`, (c) => Number(c.textContent!.replaceAll(",", "")));
  assert.ok((await seen("sinks")) >= STREAMED);
  assert.equal(await cell("sinks-cached"), SINKS + WINDOW);
  assert.equal(await seen("plain"), PLAIN_TOKENS, "plain transformers.js stops at its limit");
  assert.equal(await cell("plain-cached"), PLAIN_TOKENS);
  assert.equal(await cell("plain-bytes"), ((await cell("sinks-bytes")) / (SINKS + WINDOW)) * PLAIN_TOKENS, "KV bytes per token are the same in both caches");
  assert.ok((await cell("sinks-speed")) > 0);
  const text = await page.$eval("#text", (div) => div.textContent ?? "");
  assert.ok(text.startsWith("Once upon a time") && text.length > 200, `the streamed text: ${text.slice(0, 200)}`);
  // Both series were drawn: the chart has pixels of each color.
  const colors = await page.$eval("#chart", (canvas) => {
    const data = (canvas as HTMLCanvasElement).getContext("2d")!.getImageData(0, 0, (canvas as HTMLCanvasElement).width, (canvas as HTMLCanvasElement).height).data;
    const found = { sinks: 0, plain: 0 };
    for (let i = 0; i < data.length; i += 4) {
      if (data[i] === 0x1b && data[i + 1] === 0x6a && data[i + 2] === 0xc9) found.sinks++;
      if (data[i] === 0xd1 && data[i + 1] === 0x49 && data[i + 2] === 0x5b) found.plain++;
    }
    return found;
  });
  assert.ok(colors.sinks > 0 && colors.plain > 0, `chart pixels: ${JSON.stringify(colors)}`);
  assert.ok(browser.served.includes("/worker.js"), "the worker came from the test's server");
  assert.deepEqual(browser.outside, [], "requests left 127.0.0.1");
});

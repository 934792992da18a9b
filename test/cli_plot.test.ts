/**
 * `attention-sinks plot` in a child process, on benchmark CSVs written by the library's writer: a valid SVG
 * and PNG with one line per experiment, the summary table, and bad flags.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Resvg } from "@resvg/resvg-js";
import { CsvLogWriter, plotSpec, type ExperimentTable } from "../src/perplexity/index.js";
import { runCli } from "./support/cli.js";

const plot = (args: readonly string[]) => runCli(["plot", ...args]);

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Three experiments' CSVs: a rising full cache and two flat bounded ones. */
async function writeRuns(dir: string, rows = 400): Promise<void> {
  await mkdir(dir, { recursive: true });
  const shapes: Record<string, (i: number) => [number, number]> = {
    transformers: (i) => [1.5 + i / 100, 1024 * i],
    windowed: (i) => [2.2, 1024 * Math.min(i, 64)],
    attention_sinks: (i) => [2, 1024 * Math.min(i, 64)],
  };
  for (const [experiment, shape] of Object.entries(shapes)) {
    const writer = new CsvLogWriter(join(dir, `${experiment}.csv`), { overwrite: false });
    let sum = 0;
    for (let i = 1; i <= rows; i++) {
      const [nll, kv] = shape(i);
      sum += nll;
      writer.append({ input_length: i, nll, ppl: Math.exp(nll), overall_ppl: Math.exp(sum / i), kv_cache_bytes: kv, rss_bytes: 1e8, latency: 0.001 + (i % 7) / 1e4 });
    }
    writer.close();
  }
}

/** A line the SVG draws: Vega names each line mark's experiment and feature in its aria-label. */
interface PlottedLine {
  experiment: string;
  feature: string;
  points: [number, number][];
}

/** The line marks of a Vega SVG, with their points (line marks are drawn with M and L commands only). */
function plottedLines(svg: string): PlottedLine[] {
  const lines: PlottedLine[] = [];
  for (const path of svg.matchAll(/<path\b[^>]*\baria-roledescription="line mark"[^>]*>/g)) {
    const label = /\baria-label="([^"]*)"/.exec(path[0])?.[1] ?? "";
    const d = /\bd="([^"]*)"/.exec(path[0])?.[1] ?? "";
    assert.match(d, /^M[-\d.e]+,[-\d.e]+(L[-\d.e]+,[-\d.e]+)*$/, `a polyline: ${d.slice(0, 80)}`);
    lines.push({
      experiment: /(?:^|; )experiment: ([^;]*)/.exec(label)?.[1] ?? "",
      feature: /(?:^|; )feature: ([^;]*)/.exec(label)?.[1] ?? "",
      points: [...d.matchAll(/[ML]([-\d.e]+),([-\d.e]+)/g)].map((m) => [Number(m[1]), Number(m[2])]),
    });
  }
  return lines;
}

/** The one line of `experiment` and `feature`. */
function lineOf(lines: readonly PlottedLine[], experiment: string, feature: string): PlottedLine {
  const found = lines.filter((line) => line.experiment === experiment && line.feature === feature);
  assert.equal(found.length, 1, `one ${feature} line of ${experiment}`);
  return found[0];
}

const ys = (line: PlottedLine) => line.points.map(([, y]) => y);

/** Each line has `count` points, in increasing x, at the same x as every other line. */
function assertPoints(lines: readonly PlottedLine[], count: number): void {
  for (const line of lines) {
    assert.equal(line.points.length, count, `${line.experiment} ${line.feature}: points`);
    assert.ok(line.points.every(([x, y], i) => Number.isFinite(x) && Number.isFinite(y) && (i === 0 || x > line.points[i - 1][0])), `${line.experiment} ${line.feature}: x increases`);
    assert.deepEqual(line.points.map(([x]) => x), lines[0].points.map(([x]) => x), `${line.experiment} ${line.feature}: same x as the others`);
  }
}

function assertPng(png: Buffer): void {
  assert.deepEqual([...png.subarray(0, 8)], PNG_SIGNATURE);
  assert.equal(png.subarray(12, 16).toString("latin1"), "IHDR");
  assert.ok(png.readUInt32BE(16) > 500 && png.readUInt32BE(20) > 300, "a readable size");
}

describe("attention-sinks plot", () => {
  it("writes a valid SVG and PNG with one line per experiment, and prints the summary table", async () => {
    const dir = await mkdtemp(join(tmpdir(), "attention-sinks-plot-"));
    await writeRuns(dir);
    const run = await plot(["--output_dir", dir, "--features", "perplexity,vram,latency", "--title", "Tiny model\\nthree runs"]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^wrote .*perplexity\.png and .*perplexity\.svg/);
    assert.match(run.stdout, /\| attention_sinks \| 400 \| 7\.39 \| [\d.]+ \| 64\.0 KiB \| yes \|/);
    assert.match(run.stdout, /\| transformers \| 400 \| [\d.]+ \| [\d.]+ \| 400\.0 KiB \| no \|/);

    const svg = await readFile(join(dir, "perplexity.svg"), "utf8");
    assert.match(svg, /^<svg[^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    assert.ok(svg.trimEnd().endsWith("</svg>"));
    for (const text of ["attention_sinks", "transformers", "windowed", "Tiny model", "three runs", "Perplexity (log), lower is better", "KV cache (KiB), lower is better", "Time per token (ms), lower is better", "Input Sequence Length"]) {
      assert.ok(svg.includes(text), `the SVG shows "${text}"`);
    }
    // One line per experiment and feature, with a point per CSV row after the 100 skipped by default.
    const lines = plottedLines(svg);
    assert.equal(lines.length, 3 * 3);
    const [perplexity, memory, latency] = ["perplexity (log)", "KV cache", "time per token"];
    assertPoints(lines, 400 - 100);
    const line = (experiment: string, feature: string) => lineOf(lines, experiment, feature);
    // Lines of different values differ; equal values draw the same line (all three share each axis).
    const sinks = ys(line("attention_sinks", perplexity));
    const windowed = ys(line("windowed", perplexity));
    const dense = ys(line("transformers", perplexity));
    assert.ok(sinks.every((y) => y === sinks[0]), "a constant perplexity is a flat line");
    assert.ok(sinks.every((y, i) => y > windowed[i]), "attention_sinks' lower perplexity is drawn below windowed's (SVG y grows downwards)");
    assert.ok(dense.every((y, i) => i === 0 || y < dense[i - 1]), "the rising perplexity of transformers rises");
    assert.notDeepEqual(dense, sinks);
    assert.notDeepEqual(dense, windowed);
    assert.deepEqual(ys(line("windowed", memory)), ys(line("attention_sinks", memory)), "the same KV bytes draw the same line");
    const denseMemory = ys(line("transformers", memory));
    assert.ok(denseMemory.every((y, i) => i === 0 || y < denseMemory[i - 1]), "a growing cache rises");
    assert.ok(denseMemory.every((y, i) => y < ys(line("windowed", memory))[i]), "above the bounded ones");
    assert.deepEqual(ys(line("windowed", latency)), ys(line("attention_sinks", latency)));
    assert.deepEqual(ys(line("transformers", latency)), ys(line("attention_sinks", latency)));

    // An independent SVG parser accepts it and draws something.
    assertPng(Buffer.from(new Resvg(svg).render().asPng()));
    assertPng(await readFile(join(dir, "perplexity.png")));
  });

  it("writes to --output, with the other format beside it", async () => {
    const dir = await mkdtemp(join(tmpdir(), "attention-sinks-plot-"));
    await writeRuns(join(dir, "runs"), 150);
    const run = await plot(["--output_dir", join(dir, "runs"), "--output", join(dir, "chart.svg"), "--skip_first", "0"]);
    assert.equal(run.code, 0, run.stderr);
    const svg = await readFile(join(dir, "chart.svg"), "utf8");
    assert.ok(svg.startsWith("<svg"));
    // The default features (perplexity and KV cache) of the three runs, every row plotted with --skip_first 0.
    const lines = plottedLines(svg);
    assert.deepEqual(lines.map((line) => `${line.experiment}/${line.feature}`).sort(), ["attention_sinks", "transformers", "windowed"].flatMap((e) => [`${e}/KV cache`, `${e}/perplexity (log)`]).sort());
    assertPoints(lines, 150);
    assert.notDeepEqual(ys(lineOf(lines, "attention_sinks", "perplexity (log)")), ys(lineOf(lines, "windowed", "perplexity (log)")));
    assertPng(await readFile(join(dir, "chart.png")));
  });

  it("rejects bad flags with exit code 2, and a folder without CSVs with a clear message", async () => {
    const dir = await mkdtemp(join(tmpdir(), "attention-sinks-plot-"));
    const [badFeature, badOutput, empty] = await Promise.all([
      plot(["--output_dir", dir, "--features", "perplexity,speed"]),
      plot(["--output_dir", dir, "--output", join(dir, "plot.jpg")]),
      plot(["--output_dir", dir]),
    ]);
    assert.equal(badFeature.code, 2);
    assert.match(badFeature.stderr, /--features must be one of perplexity, memory, latency, vram; got "speed"/);
    assert.equal(badOutput.code, 2);
    assert.match(badOutput.stderr, /--output: the plot output must end in \.png or \.svg/);
    assert.equal(empty.code, 1);
    assert.match(empty.stderr, /holds no \.csv file: run `attention-sinks perplexity --output_dir/);
    assert.equal(existsSync(join(dir, "perplexity.png")), false);
  });

  it("caps the log-perplexity axis at --log_perplexity_limit only when the data cross it", () => {
    const table = (low: number, high: number): ExperimentTable => ({
      experiment: "run",
      columns: { input_length: [1, 2, 3], overall_ppl: [Math.exp(low), Math.exp(high), Math.exp(low)], kv_cache_bytes: [1, 2, 3], latency: [1, 1, 1] },
    });
    const yScale = (low: number, high: number) => {
      const spec = plotSpec([table(low, high)], { skip_first: 0, log_perplexity_limit: 5 }) as unknown as { layer: { encoding: { y: { scale: Record<string, unknown> } } }[] };
      return spec.layer[0].encoding.y.scale;
    };
    assert.equal(yScale(1, 9).domainMax, 5);
    assert.equal(yScale(1, 4).domainMax, undefined, "all below");
    assert.equal(yScale(6, 9).domainMax, undefined, "all above: capping would hide everything");
  });
});

/**
 * The benchmark plot, drawn as the seed draws it: one line per experiment (named by its CSV file), log
 * perplexity on the first y axis and each further feature on an axis of its own, against the input length.
 * The chart is a Vega-Lite spec rendered to SVG by Vega, and to PNG by resvg.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, extname, join } from "node:path";
import type { TopLevelSpec } from "vega-lite";
import { requireOptionalDependencies } from "../platform/optional_dependency.js";
import { ensureFileTarget } from "../platform/output_paths.js";
import { OutputExistsError, parseBenchmarkCsv, type BenchmarkColumns } from "./csv.js";

export const PLOT_FEATURES = ["perplexity", "memory", "latency"] as const;
export type PlotFeature = (typeof PLOT_FEATURES)[number];

export const DEFAULT_PLOT_TITLE = "Log perplexity as a function of input lengths";

/** One experiment's CSV. */
export interface ExperimentTable {
  experiment: string;
  columns: BenchmarkColumns;
}

export interface PlotOptions {
  /** Default perplexity and memory. */
  features?: readonly PlotFeature[];
  /** `\n` (a newline, or the two characters) starts a new title line. */
  title?: string;
  /** The log-perplexity axis stops here when the data go higher, and some lower (default 5). */
  log_perplexity_limit?: number;
  /** Rows skipped at the start of each CSV (default 100). */
  skip_first?: number;
}

/** Points kept per line: enough for the eye, few enough for a small SVG. */
const MAX_POINTS = 1500;
/** Loess bandwidth smoothing the (noisy) per-token latency, as the seed smooths it with a polynomial fit. */
const LATENCY_BANDWIDTH = 0.1;
const WIDTH = 640;
const HEIGHT = 360;
/** How far each axis after the second sits right of the chart. */
const EXTRA_AXIS_OFFSET = 70;
/** The plot's font, shipped as a package so the PNG renders the same on every machine. */
const FONT = "DejaVu Sans";
const FONT_FILES = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf"];

interface FeatureStyle {
  column: string;
  /** The line style's legend entry. */
  name: string;
  /** The axis title. */
  label: string;
  dash: number[];
  /** The plotted value of a CSV value. */
  value: (v: number) => number;
}

const BYTE_UNITS: [string, number][] = [
  ["GiB", 2 ** 30],
  ["MiB", 2 ** 20],
  ["KiB", 2 ** 10],
  ["bytes", 1],
];

/** Every `*.csv` of `dir`, by experiment name, in name order. */
export function readExperimentTables(dir: string): ExperimentTable[] {
  if (!existsSync(dir)) throw new Error(`${dir} does not exist: run \`attention-sinks perplexity --output_dir ${dir}\` first`);
  const files = readdirSync(dir).filter((name) => extname(name) === ".csv").sort();
  if (files.length === 0) throw new Error(`${dir} holds no .csv file: run \`attention-sinks perplexity --output_dir ${dir}\` first`);
  return files.map((name) => ({ experiment: basename(name, ".csv"), columns: parseBenchmarkCsv(readFileSync(join(dir, name), "utf8"), join(dir, name)) }));
}

/** The Vega-Lite spec of the plot (typed loosely here: Vega-Lite is an optional dependency). */
export function plotSpec(tables: readonly ExperimentTable[], options: PlotOptions = {}): Record<string, unknown> {
  const features = options.features ?? ["perplexity", "memory"];
  const skip = options.skip_first ?? 100;
  const limit = options.log_perplexity_limit ?? 5;
  const maxBytes = tables.reduce((max, table) => (table.columns.kv_cache_bytes ?? []).reduce((m, v) => Math.max(m, v), max), 1);
  const [unit, unitBytes] = BYTE_UNITS.find(([, size]) => maxBytes >= size) ?? BYTE_UNITS[BYTE_UNITS.length - 1];
  const styles: Record<PlotFeature, FeatureStyle> = {
    perplexity: { column: "overall_ppl", name: "perplexity (log)", label: "Perplexity (log), lower is better", dash: [1, 0], value: Math.log },
    memory: { column: "kv_cache_bytes", name: "KV cache", label: `KV cache (${unit}), lower is better`, dash: [6, 3], value: (v) => v / unitBytes },
    latency: { column: "latency", name: "time per token", label: "Time per token (ms), lower is better", dash: [2, 2], value: (v) => v * 1000 },
  };

  const values: { experiment: string; feature: string; input_length: number; value: number }[] = [];
  for (const { experiment, columns } of tables) {
    const lengths = columns.input_length;
    if (!lengths) throw new Error(`${experiment}.csv has no input_length column`);
    const rows = Math.max(0, lengths.length - skip);
    const stride = Math.max(1, Math.ceil(rows / MAX_POINTS));
    for (const feature of features) {
      const { column, name, value } = styles[feature];
      const data = columns[column];
      if (!data) throw new Error(`${experiment}.csv has no ${column} column, which the ${feature} feature plots`);
      for (let row = skip; row < lengths.length; row += stride) {
        values.push({ experiment, feature: name, input_length: lengths[row], value: value(data[row]) });
      }
    }
  }

  if (values.length === 0) {
    throw new RangeError(`nothing to plot: every CSV has at most ${skip} rows, and --skip_first ${skip} skips them all`);
  }
  const layers = features.map((feature, index) => {
    const { name, label } = styles[feature];
    const plotted = values.filter((point) => point.feature === name);
    // Capped only where the cap leaves something to see.
    const clipped = feature === "perplexity" && plotted.some((point) => point.value > limit) && plotted.some((point) => point.value < limit);
    return {
      transform: [
        { filter: { field: "feature", equal: name } },
        ...(feature === "latency" ? [{ loess: "value", on: "input_length", groupby: ["experiment", "feature"], bandwidth: LATENCY_BANDWIDTH }] : []),
      ],
      mark: { type: "line" as const, clip: true, strokeWidth: 1.5 },
      encoding: {
        x: { field: "input_length", type: "quantitative" as const, title: "Input Sequence Length", scale: { zero: false, nice: false } },
        y: {
          field: "value",
          type: "quantitative" as const,
          title: label,
          scale: { zero: feature !== "perplexity", ...(clipped ? { domainMax: limit } : {}) },
          axis: { orient: index === 0 ? ("left" as const) : ("right" as const), offset: index > 1 ? (index - 1) * EXTRA_AXIS_OFFSET : 0, grid: index === 0 },
        },
        color: { field: "experiment", type: "nominal" as const, title: "experiment" },
        strokeDash: {
          field: "feature",
          type: "nominal" as const,
          title: null,
          scale: { domain: features.map((f) => styles[f].name), range: features.map((f) => styles[f].dash) },
        },
      },
    };
  });

  const title = (options.title ?? DEFAULT_PLOT_TITLE).split(/\n|\\n/);
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: title.length === 1 ? title[0] : title },
    width: WIDTH,
    height: HEIGHT,
    background: "white",
    data: { values },
    layer: layers,
    resolve: { scale: { y: "independent" } },
    config: { font: FONT, legend: { orient: "bottom", direction: "vertical", columns: 2 } },
  } satisfies TopLevelSpec;
}

/** The plot as SVG text and PNG bytes (rendered at twice the SVG's size). */
export async function renderPlot(tables: readonly ExperimentTable[], options: PlotOptions = {}): Promise<{ svg: string; png: Uint8Array }> {
  requireOptionalDependencies("Plotting", ["vega", "vega-lite", "@resvg/resvg-js", "dejavu-fonts-ttf"]);
  // Loaded here, not with the module: they would add half a second to every command of the CLI.
  const [{ parse: parseVega, View }, { compile }, { Resvg }] = await Promise.all([import("vega"), import("vega-lite"), import("@resvg/resvg-js")]);
  const fontFiles = FONT_FILES.map((file) => createRequire(import.meta.url).resolve(`dejavu-fonts-ttf/ttf/${file}`));
  const view = new View(parseVega(compile(plotSpec(tables, options) as unknown as TopLevelSpec).spec), { renderer: "none" });
  const svg = await view.toSVG();
  view.finalize();
  const png = new Resvg(svg, {
    fitTo: { mode: "zoom", value: 2 },
    background: "white",
    font: { loadSystemFonts: false, fontFiles, defaultFontFamily: FONT, sansSerifFamily: FONT },
  })
    .render()
    .asPng();
  return { svg, png };
}

/** The SVG and PNG paths of a plot output named by either (`x.png` or `x.svg`). */
export function plotPaths(output: string): { svg: string; png: string } {
  const extension = extname(output);
  if (extension !== ".png" && extension !== ".svg") throw new RangeError(`the plot output must end in .png or .svg, got "${output}"`);
  const stem = output.slice(0, -extension.length);
  return { svg: `${stem}.svg`, png: `${stem}.png` };
}

/**
 * Plots `tables` into `output` and the other format beside it; returns the paths written. Existing files are
 * replaced only with `overwrite`, as every command that writes files does.
 */
export async function writePlot(
  tables: readonly ExperimentTable[],
  output: string,
  options: PlotOptions & { overwrite?: boolean } = {},
): Promise<{ svg: string; png: string }> {
  const paths = plotPaths(output);
  const existing = [paths.png, paths.svg].filter((path) => existsSync(path));
  if (existing.length > 0 && !options.overwrite) {
    throw new OutputExistsError(`${existing.join(" and ")} already exist${existing.length === 1 ? "s" : ""}; pass --overwrite to replace ${existing.length === 1 ? "it" : "them"}`);
  }
  for (const path of [paths.svg, paths.png]) ensureFileTarget(path);
  const { svg, png } = await renderPlot(tables, options);
  writeFileSync(paths.svg, svg);
  writeFileSync(paths.png, png);
  return paths;
}

/** `attention-sinks plot`: the benchmark plot of every CSV in a folder, as SVG and PNG, and a summary table. */
import { join } from "node:path";
import { OutputExistsError } from "../../perplexity/csv.js";
import { DEFAULT_PLOT_TITLE, PLOT_FEATURES, plotPaths, readExperimentTables, writePlot, type PlotFeature } from "../../perplexity/plot.js";
import { summarizeExperiments } from "../../perplexity/summary.js";
import { summaryTable } from "../format.js";
import { flags, UsageError } from "../args.js";
import { defineCommand } from "../command.js";

const FEATURE_CHOICES = [...PLOT_FEATURES, "vram"] as const;

const spec = {
  name: "plot",
  summary: "Plot the perplexity benchmark CSVs of a folder (one line per experiment) to SVG and PNG, and print a summary table.",
  flags: flags({
    output_dir: { type: "string", metavar: "DIR", default: "benchmark/outputs", description: "the folder of {experiment}.csv files" },
    features: {
      type: "list",
      choices: FEATURE_CHOICES,
      default: ["perplexity", "memory"],
      description: "what to plot, each on its own axis (vram is memory: the KV cache)",
    },
    title: { type: "string", default: DEFAULT_PLOT_TITLE, description: "the plot title (\\n starts a new line)" },
    log_perplexity_limit: { type: "number", default: 5, description: "top of the log-perplexity axis when the data go higher" },
    skip_first: { type: "integer", min: 0, default: 100, description: "rows skipped at the start of each CSV" },
    output: { type: "string", metavar: "FILE", description: "the PNG to write, with the .svg beside it (default {output_dir}/perplexity.png)" },
    overwrite: { type: "boolean", description: "replace an existing plot" },
  }),
  examples: ["attention-sinks plot --output_dir benchmark/outputs --features perplexity memory latency"],
};

export const plotCommand = defineCommand(spec, async ({ flags: values }) => {
  const dir = values.output_dir;
  const output = values.output ?? join(dir, "perplexity.png");
  try {
    plotPaths(output);
  } catch (error) {
    throw new UsageError(`--output: ${(error as Error).message}`);
  }
  const features: PlotFeature[] = [...new Set(values.features.map((f) => (f === "vram" ? "memory" : f)))];
  if (features.length === 0) throw new UsageError("--features needs at least one of perplexity, memory, latency");
  const tables = readExperimentTables(dir);
  const written = await writePlot(tables, output, {
    features,
    title: values.title,
    log_perplexity_limit: values.log_perplexity_limit,
    skip_first: values.skip_first,
    overwrite: values.overwrite,
  }).catch((error: unknown) => {
    if (error instanceof OutputExistsError || error instanceof RangeError) throw new UsageError(error.message);
    throw error;
  });
  process.stdout.write(`wrote ${written.png} and ${written.svg}\n\n${summaryTable(summarizeExperiments(tables))}\n`);
  return 0;
});

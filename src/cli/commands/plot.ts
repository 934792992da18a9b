/** `attention-sinks plot`: the benchmark plot of every CSV in a folder, as SVG and PNG, and a summary table. */
import { join } from "node:path";
import { DEFAULT_PLOT_TITLE, PLOT_FEATURES, plotPaths, readExperimentTables, writePlot, type PlotFeature } from "../../perplexity/plot.js";
import { summarizeExperiments } from "../../perplexity/summary.js";
import { summaryTable } from "../format.js";
import { UsageError, type CommandSpec, type ParsedArgs } from "../args.js";
import type { Command } from "../command.js";

const spec: CommandSpec = {
  name: "plot",
  summary: "Plot the perplexity benchmark CSVs of a folder (one line per experiment) to SVG and PNG, and print a summary table.",
  flags: {
    output_dir: { type: "string", metavar: "DIR", default: "benchmark/outputs", description: "the folder of {experiment}.csv files" },
    features: {
      type: "list",
      choices: [...PLOT_FEATURES, "vram"],
      default: ["perplexity", "memory"],
      description: "what to plot, each on its own axis (vram is memory: the KV cache)",
    },
    title: { type: "string", default: DEFAULT_PLOT_TITLE, description: "the plot title (\\n starts a new line)" },
    log_perplexity_limit: { type: "number", default: 5, description: "top of the log-perplexity axis when the data go higher" },
    skip_first: { type: "integer", min: 0, default: 100, description: "rows skipped at the start of each CSV" },
    output: { type: "string", metavar: "FILE", description: "the PNG to write, with the .svg beside it (default {output_dir}/perplexity.png)" },
  },
  examples: ["attention-sinks plot --output_dir benchmark/outputs --features perplexity memory latency"],
};

async function run(args: ParsedArgs): Promise<number> {
  const flags = args.flags;
  const dir = flags.output_dir as string;
  const output = (flags.output as string | undefined) ?? join(dir, "perplexity.png");
  try {
    plotPaths(output);
  } catch (error) {
    throw new UsageError(`--output: ${(error as Error).message}`);
  }
  const features = [...new Set((flags.features as string[]).map((f) => (f === "vram" ? "memory" : f)))] as PlotFeature[];
  if (features.length === 0) throw new UsageError("--features needs at least one of perplexity, memory, latency");
  const tables = readExperimentTables(dir);
  const written = await writePlot(tables, output, {
    features,
    title: flags.title as string,
    log_perplexity_limit: flags.log_perplexity_limit as number,
    skip_first: flags.skip_first as number,
  });
  process.stdout.write(`wrote ${written.png} and ${written.svg}\n\n${summaryTable(summarizeExperiments(tables))}\n`);
  return 0;
}

export const plotCommand: Command = { spec, run };

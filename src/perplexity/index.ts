/** The perplexity benchmark: the library behind `attention-sinks perplexity` and `attention-sinks plot`. */
export { CSV_COLUMNS, CsvLogWriter, OutputExistsError, parseBenchmarkCsv, type BenchmarkColumns } from "./csv.js";
export { DatasetError, loadTextSamples, type DatasetOptions } from "./dataset.js";
export { evaluatePerplexity, tokenNll, type EvaluationOptions, type EvaluationResult, type TokenRecord, type TokenStream } from "./evaluate.js";
export { EXPERIMENTS, type Experiment } from "../backend/experiments.js";
export {
  DEFAULT_PLOT_TITLE,
  PLOT_FEATURES,
  plotPaths,
  plotSpec,
  readExperimentTables,
  renderPlot,
  writePlot,
  type ExperimentTable,
  type PlotFeature,
  type PlotOptions,
} from "./plot.js";
export { encodeSample, runPerplexity, type PerplexityRunHooks, type PerplexityRunOptions, type PerplexityRunResult } from "./run.js";
export { summarizeExperiments, type ExperimentSummary } from "./summary.js";

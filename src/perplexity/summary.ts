/** The numbers a benchmark run is reported with: final perplexity, speed and cache size per experiment. */
import type { ExperimentTable } from "./plot.js";

export interface ExperimentSummary {
  experiment: string;
  tokens: number;
  /** exp of the mean NLL over every evaluated token. */
  overall_ppl: number;
  /** Evaluated tokens per second of forward passes and losses (the latencies summed). */
  tokens_per_second: number;
  /** The largest KV cache of the run. */
  max_kv_cache_bytes: number;
  /** Whether the KV cache stopped growing: the last quarter of the run all at the largest size. */
  bounded: boolean;
}

function column(table: ExperimentTable, name: string): number[] {
  const values = table.columns[name];
  if (!values) throw new Error(`${table.experiment}.csv has no ${name} column`);
  return values;
}

export function summarizeExperiments(tables: readonly ExperimentTable[]): ExperimentSummary[] {
  return tables.map((table) => {
    const nll = column(table, "nll");
    const latency = column(table, "latency");
    const kv = column(table, "kv_cache_bytes");
    const tokens = nll.length;
    const maxBytes = kv.reduce((max, bytes) => Math.max(max, bytes), 0);
    return {
      experiment: table.experiment,
      tokens,
      overall_ppl: Math.exp(nll.reduce((sum, v) => sum + v, 0) / tokens),
      tokens_per_second: tokens / latency.reduce((sum, v) => sum + v, 0),
      max_kv_cache_bytes: maxBytes,
      bounded: tokens > 0 && kv.slice(Math.floor((3 * tokens) / 4)).every((bytes) => bytes === maxBytes),
    };
  });
}

/** How the command line writes numbers: byte sizes, counts and the perplexity summary table. */
import type { ExperimentSummary } from "../perplexity/summary.js";

export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

export function count(value: number): string {
  return value.toLocaleString("en-US", { maximumFractionDigits: 1 });
}

/** The summaries as a Markdown table. */
export function summaryTable(summaries: readonly ExperimentSummary[]): string {
  const lines = [
    "| experiment | tokens | overall perplexity | tokens/s | KV cache (max) | KV cache bounded |",
    "|---|---:|---:|---:|---:|:---:|",
  ];
  for (const s of summaries) {
    lines.push(
      `| ${s.experiment} | ${s.tokens} | ${s.overall_ppl.toFixed(2)} | ${s.tokens_per_second.toFixed(1)} | ${formatBytes(s.max_kv_cache_bytes)} | ${s.bounded ? "yes" : "no"} |`,
    );
  }
  return lines.join("\n");
}

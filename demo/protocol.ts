/** The messages between the demo page and its worker. */
import type { SinkCacheStats } from "attention-sinks";

export interface StartMessage {
  type: "start";
  /** The picked folder's files; found by name, so a flat selection works too. */
  files: File[];
  prompt: string;
  attention_sink_size: number;
  attention_sink_window_size: number;
  /** Plain transformers.js streams beside the sink cache until it has seen this many tokens (0: not at all). */
  plain_tokens: number;
}

export type ToWorker = StartMessage | { type: "stop" };

/** One stream's counters after a step. */
export interface StreamReport {
  stats: SinkCacheStats;
  tokens_per_second: number;
}

export type FromWorker =
  | { type: "loaded"; model_type: string; load_seconds: number }
  | { type: "step"; text: string; sinks: StreamReport; plain: StreamReport | null }
  | { type: "stopped" }
  | { type: "error"; message: string };

/**
 * A model's whole streaming setup, resolved once when it loads: its family's geometry, the slot rule of its
 * positional scheme, and the sink sizes that rule and the model's positions allow.
 */
import { resolveGeometry, type ModelConfig, type ModelGeometry } from "../positions/families.js";
import { slotRule, type GraphPositions, type SlotRule } from "../positions/slot_rule.js";
import { resolveSinkPolicy, type AttentionSinkOptions, type SinkPolicy } from "./options.js";

/** What a streaming model reports about its configuration (`model.attention_sinks`). */
export interface AttentionSinkSettings extends SinkPolicy {
  model_type: string;
  positions: ModelGeometry["scheme"]["kind"];
}

export interface StreamingPolicy {
  settings: AttentionSinkSettings;
  /** The geometry, with RoPE factors chosen for the positions the cache will use. */
  geometry: ModelGeometry;
  rule: SlotRule;
}

export function resolveStreamingPolicy(config: ModelConfig, options: AttentionSinkOptions, graph: GraphPositions): StreamingPolicy {
  const { scheme, max_positions, model_type, sliding_window } = resolveGeometry(config);
  const rule = slotRule(scheme, graph);
  const policy = resolveSinkPolicy(options, {
    max_positions,
    lazy_eviction: rule.lazy_eviction,
    masked_slots_use_positions: rule.position_ids === "slot",
    sliding_window: sliding_window?.size ?? null,
  });
  // longrope picks its factors by the largest position in use, which masked slots extend.
  const geometry = resolveGeometry(config, policy.capacity + policy.compaction_interval);
  return { settings: { ...policy, model_type, positions: scheme.kind }, geometry, rule: slotRule(geometry.scheme, graph) };
}

/**
 * The one rule each positional scheme sets for the sink cache: whether an evicted slot may stay in the
 * buffers (masked out) until compaction, which position a new token gets, and whether moving a key means
 * rotating it. Everything else (the default window, the compaction interval, the feeds) follows from it.
 */
import type { PositionScheme } from "./families.js";
import type { RopeSpec } from "./rope.js";

export interface SlotRule {
  /** Evicted slots may stay masked until compaction; otherwise every eviction compacts at once. */
  lazy_eviction: boolean;
  /**
   * `slot`: a token's position is its slot index, so masked slots use up positions; `attended`: the count of
   * attended tokens before it, so they do not.
   */
  position_ids: "slot" | "attended";
  /** The rotation baked into cached keys, which moving a key to another slot must redo (RoPE only). */
  rotation: { spec: RopeSpec; inverse_frequencies: Float32Array } | null;
}

/** What the model's graph tells about positions. */
export interface GraphPositions {
  /** Whether the graph takes `position_ids` (otherwise it derives positions from slot indices itself). */
  takes_position_ids: boolean;
}

export function slotRule(scheme: PositionScheme, graph: GraphPositions): SlotRule {
  switch (scheme.kind) {
    case "rope":
      // Slot positions reach the graph only through position_ids; without them, positions count every slot,
      // masked ones included, so evicted slots must go at once.
      return {
        lazy_eviction: graph.takes_position_ids,
        position_ids: "slot",
        rotation: { spec: scheme.rope, inverse_frequencies: scheme.inverse_frequencies },
      };
    case "alibi":
      // Distances counted over attended slots skip masked ones by construction; counted over slot indices
      // (MPT) they would include them.
      return { lazy_eviction: scheme.positions === "mask_cumsum", position_ids: "attended", rotation: null };
    case "learned":
      // Positions are looked up per new token; cached keys never move position.
      return { lazy_eviction: true, position_ids: "attended", rotation: null };
  }
}

/**
 * What a loaded graph itself says, held against how it will stream, at load:
 * - RoPE tables baked into it (the `cos_cache` / `sin_cache` initializers onnxruntime-genai's model builder
 *   writes for RotaryEmbedding and GroupQueryAttention) hold the positions it rotates by. The sink cache
 *   re-rotates keys by what config.json says, so a config that disagrees would stream with wrong positions
 *   silently.
 * - GroupQueryAttention reads no mask: it attends to the first seqlens_k + 1 slots, so evicted slots cannot
 *   wait masked. Graphs without position_ids already compact on every eviction; one that declares them does not.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { AttentionSinkSettings } from "../cache/streaming_policy.js";
import { SinkCacheError } from "../cache/sink_cache.js";
import { readGraphSummary, type FloatInitializer } from "../onnx/graph_summary.js";
import { resolveGeometry, type ModelConfig } from "../positions/families.js";
import { ropeAttentionFactor } from "../positions/rope.js";

/** The file suffix transformers.js loads for each dtype (`onnx/model{suffix}.onnx`). */
const DTYPE_SUFFIX: Readonly<Record<string, string>> = {
  fp32: "", fp16: "_fp16", q8: "_quantized", int8: "_int8", uint8: "_uint8", q4: "_q4", q4f16: "_q4f16", bnb4: "_bnb4",
};

/** float16 tables round to 11 bits; float32 angles of large positions lose a little more. */
const TABLE_TOLERANCE = 5e-3;

/** The decoder graph transformers.js loads from a local model directory for `dtype`, if it is there. */
function localModelFile(dir: string, dtype: unknown, config: ModelConfig): string | undefined {
  const configured = (config as { "transformers.js_config"?: { dtype?: unknown } })["transformers.js_config"]?.dtype;
  const chosen = typeof dtype === "string" && dtype !== "auto" ? dtype : typeof configured === "string" ? configured : "fp32";
  const suffix = Object.hasOwn(DTYPE_SUFFIX, chosen) ? DTYPE_SUFFIX[chosen] : undefined;
  const file = suffix === undefined ? undefined : join(dir, "onnx", `model${suffix}.onnx`);
  return file !== undefined && existsSync(file) ? file : undefined;
}

/** After a streaming model loads from a local directory: checks the graph it loaded. */
export async function checkLoadedGraph(dir: string, dtype: unknown, config: ModelConfig, settings: AttentionSinkSettings): Promise<void> {
  if (!existsSync(dir)) return;
  const file = localModelFile(dir, dtype, config);
  if (!file) return;
  const graph = await readGraphSummary(file, new Set(["cos_cache", "sin_cache"]));
  if (graph.op_types.has("GroupQueryAttention") && settings.compaction_interval > 0) {
    throw new SinkCacheError(
      `${file} computes attention with GroupQueryAttention, which attends to every cache slot up to seqlens_k whatever ` +
        "the attention mask says, so evicted slots cannot wait masked: load it with attention_sink_compaction_interval: 0 (compaction on every eviction)",
    );
  }
  const [cos, sin] = [graph.initializers.get("cos_cache"), graph.initializers.get("sin_cache")];
  if (cos && sin) checkRotaryTables(file, cos, sin, config, settings);
}

/** Refuses baked RoPE tables that disagree with the config, naming the value that does. */
function checkRotaryTables(modelFile: string, cos: FloatInitializer, sin: FloatInitializer, config: ModelConfig, settings: AttentionSinkSettings): void {
  const positionsInUse = settings.capacity + settings.compaction_interval;
  const { scheme } = resolveGeometry(config, positionsInUse);
  if (scheme.kind !== "rope") return;
  const refuse = (problem: string) =>
    new SinkCacheError(`${modelFile} bakes RoPE tables (cos_cache, sin_cache) that disagree with config.json: ${problem}`);
  const [rows, pairs] = cos.dims;
  const expectedPairs = scheme.rope.rotary_dim / 2;
  if (cos.dims.length !== 2 || sin.dims.join() !== cos.dims.join() || pairs !== expectedPairs) {
    throw refuse(`they hold [${cos.dims}] values, but config.json gives ${expectedPairs} rotating pairs per head (head_dim ${scheme.rope.head_dim}, rotary dimensions ${scheme.rope.rotary_dim})`);
  }
  if (rows < positionsInUse) {
    throw refuse(
      `they cover positions 0..${rows - 1}, but this cache uses positions up to ${positionsInUse - 1} ` +
        "(attention_sink_size + attention_sink_window_size + attention_sink_compaction_interval): give a smaller window",
    );
  }
  const factor = ropeAttentionFactor(scheme.rope);
  for (const position of [1, positionsInUse - 1]) {
    for (let pair = 0; pair < pairs; pair++) {
      const [c, s] = [cos.values[position * pairs + pair], sin.values[position * pairs + pair]];
      const angle = Math.fround(position * scheme.inverse_frequencies[pair]);
      const magnitude = Math.hypot(c, s);
      if (Math.abs(magnitude - factor) > TABLE_TOLERANCE * factor) {
        throw refuse(`at position ${position} they scale by ${magnitude.toPrecision(4)}, but config.json's rope_scaling gives an attention factor of ${factor.toPrecision(4)}`);
      }
      if (Math.abs(c - factor * Math.cos(angle)) > TABLE_TOLERANCE * factor || Math.abs(s - factor * Math.sin(angle)) > TABLE_TOLERANCE * factor) {
        throw refuse(
          `at position ${position}, pair ${pair} turns by ${Math.atan2(s, c).toPrecision(4)} radians, but config.json's rope_theta ` +
            `${scheme.rope.theta}${scheme.rope.scaling ? " with its rope_scaling" : ""} gives ${Math.atan2(Math.sin(angle), Math.cos(angle)).toPrecision(4)}`,
        );
      }
    }
  }
}

/**
 * The architecture of a decoder-only transformer, as plain data.
 *
 * One description serves three consumers: the ONNX graph builder (`src/onnx`), the plain TypeScript
 * reference forward (`test/support/reference`) and the checkpoint converters (`src/convert`). Weights are named and
 * laid out as in Hugging Face Llama checkpoints (`[out_features, in_features]` for linear layers), so a
 * Llama-family checkpoint maps onto it name for name; other families' names and fused projections are mapped
 * onto them on conversion (`src/convert/hf_families.ts`).
 */
import { ropeValuesProblem, type RopeSpec } from "../positions/rope.js";
import type { SlidingWindow } from "../positions/sliding_window.js";

/** How token positions enter the model. */
export type PositionSpec =
  /** Rotary embeddings applied to queries and keys inside attention. */
  | { kind: "rope"; rope: RopeSpec }
  /**
   * ALiBi: a per-head linear bias on the query-key distance. `mask_cumsum` counts positions over the
   * attended (mask = 1) slots only, as Bloom and Falcon do; `key_index` counts every cache slot, as MPT does.
   */
  | {
      kind: "alibi";
      positions: "mask_cumsum" | "key_index";
      /** Falcon adds the bias before scaling the scores by 1/sqrt(head_dim), so it is scaled too. */
      scaled_by_head_dim?: boolean;
    }
  /** A learned absolute position table added to the token embeddings (GPT-2, OPT). */
  | { kind: "learned"; max_positions: number };

export interface DecoderSpec {
  vocab_size: number;
  hidden_size: number;
  num_layers: number;
  num_heads: number;
  /** Key/value heads; fewer than `num_heads` is grouped-query attention. */
  num_kv_heads: number;
  head_dim: number;
  intermediate_size: number;
  /** `rms`: RMSNorm (weight only). `layer`: LayerNorm (weight and bias). */
  norm: "rms" | "layer";
  norm_eps: number;
  /**
   * `swiglu`: down(silu(gate(x)) * up(x)) (Llama). `geglu`: down(gelu_tanh(gate(x)) * up(x)) (Gemma).
   * `gelu`: down(gelu_tanh(up(x) + b)) + b (GPT-2). `gelu_exact`: down(gelu(up(x))) with the erf form of GELU
   * (Falcon). Only `gelu` has biases of its own; `dense_bias` gives them to any.
   */
  mlp: "swiglu" | "geglu" | "gelu" | "gelu_exact";
  positions: PositionSpec;
  /** When true the output projection reuses `model.embed_tokens.weight`. */
  tie_word_embeddings: boolean;
  /** Whether the query, key and value projections add a bias (Qwen2). Default false. */
  qkv_bias?: boolean;
  /** Whether the attention output and MLP projections add a bias (Falcon with `bias`; `gelu` MLPs always do). */
  dense_bias?: boolean;
  /** Multiplies the token embeddings before the first layer (Gemma: sqrt(hidden_size)). Default 1. */
  embedding_multiplier?: number;
  /**
   * `sequential` (default): h = x + attn(norm1(x)), out = h + mlp(norm2(h)). `parallel`: out = x +
   * attn(norm1(x)) + mlp(norm2(x)) (Falcon's new decoder architecture); `parallel_shared_norm` feeds both
   * from norm1(x) and has no norm2 (Falcon-7B).
   */
  block?: "sequential" | "parallel" | "parallel_shared_norm";
  /**
   * Attention the graph itself limits to keys fewer than `size` cache slots behind the query, in `layers`
   * (Mistral, Phi-3 and Qwen2 windows; Gemma 2 and GPT-Neo local layers). Counted in slots, as exported
   * graphs count it, not in tokens of the stream.
   */
  sliding_window?: SlidingWindow;
}


/** A weight tensor: row-major float32 data and its shape. */
export interface WeightTensor {
  shape: readonly number[];
  data: Float32Array;
}

/** Weights by name (see {@link weightShapes} for the names a spec needs). */
export type DecoderWeights = ReadonlyMap<string, WeightTensor>;

/** Whether the MLP's projections add a bias. */
export function mlpHasBias(spec: DecoderSpec): boolean {
  return spec.mlp === "gelu" || spec.dense_bias === true;
}

/**
 * Every weight a spec needs, by name, with its shape. Biases exist only for `layer` norms, MLPs with
 * {@link mlpHasBias}, the query, key and value projections with `qkv_bias`, and the output one with `dense_bias`.
 */
export function weightShapes(spec: DecoderSpec): Map<string, number[]> {
  const { hidden_size: h, num_heads, num_kv_heads, head_dim, intermediate_size: ffn, vocab_size } = spec;
  const shapes = new Map<string, number[]>();
  const norm = (name: string) => {
    shapes.set(`${name}.weight`, [h]);
    if (spec.norm === "layer") shapes.set(`${name}.bias`, [h]);
  };
  shapes.set("model.embed_tokens.weight", [vocab_size, h]);
  if (spec.positions.kind === "learned") shapes.set("model.embed_positions.weight", [spec.positions.max_positions, h]);
  for (let i = 0; i < spec.num_layers; i++) {
    const layer = `model.layers.${i}`;
    norm(`${layer}.input_layernorm`);
    for (const [name, heads] of [["q", num_heads], ["k", num_kv_heads], ["v", num_kv_heads]] as const) {
      shapes.set(`${layer}.self_attn.${name}_proj.weight`, [heads * head_dim, h]);
      if (spec.qkv_bias) shapes.set(`${layer}.self_attn.${name}_proj.bias`, [heads * head_dim]);
    }
    shapes.set(`${layer}.self_attn.o_proj.weight`, [h, num_heads * head_dim]);
    if (spec.dense_bias) shapes.set(`${layer}.self_attn.o_proj.bias`, [h]);
    if (spec.block !== "parallel_shared_norm") norm(`${layer}.post_attention_layernorm`);
    const projections: [string, number, number][] = [["up_proj", ffn, h], ["down_proj", h, ffn]];
    if (spec.mlp === "swiglu" || spec.mlp === "geglu") projections.unshift(["gate_proj", ffn, h]);
    for (const [name, out, inFeatures] of projections) {
      shapes.set(`${layer}.mlp.${name}.weight`, [out, inFeatures]);
      if (mlpHasBias(spec)) shapes.set(`${layer}.mlp.${name}.bias`, [out]);
    }
  }
  norm("model.norm");
  if (!spec.tie_word_embeddings) shapes.set("lm_head.weight", [vocab_size, h]);
  return shapes;
}

/** A DecoderSpec whose numbers do not describe a model. */
export class DecoderSpecError extends Error {
  override name = "DecoderSpecError";
}

/** Checks a spec once for every consumer (graph builder, converters, oracle): counts, divisibility, positions. */
export function validateDecoderSpec(spec: DecoderSpec): void {
  const fail = (message: string): never => {
    throw new DecoderSpecError(`invalid DecoderSpec: ${message}`);
  };
  const counts = [
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
  ] as const;
  for (const key of counts) {
    if (!Number.isInteger(spec[key]) || spec[key] < 1) fail(`${key} must be a positive integer, got ${spec[key]}`);
  }
  if (spec.num_heads % spec.num_kv_heads !== 0) {
    fail(`num_heads (${spec.num_heads}) must be a multiple of num_kv_heads (${spec.num_kv_heads})`);
  }
  if (spec.norm !== "rms" && spec.norm !== "layer") fail(`unknown norm ${String(spec.norm)}`);
  if (!(Number.isFinite(spec.norm_eps) && spec.norm_eps >= 0)) fail(`norm_eps must be a finite non-negative number, got ${spec.norm_eps}`);
  if (!["swiglu", "geglu", "gelu", "gelu_exact"].includes(spec.mlp)) fail(`unknown mlp ${String(spec.mlp)}`);
  const block = spec.block ?? "sequential";
  if (!["sequential", "parallel", "parallel_shared_norm"].includes(block)) fail(`unknown block ${String(block)}`);
  const multiplier = spec.embedding_multiplier ?? 1;
  if (!(multiplier > 0 && Number.isFinite(multiplier))) fail(`embedding_multiplier must be a positive number, got ${multiplier}`);
  if (spec.sliding_window) {
    const { size, layers } = spec.sliding_window;
    if (!Number.isInteger(size) || size < 1) fail(`sliding_window.size must be a positive integer, got ${size}`);
    const valid = layers.every((layer, i) => Number.isInteger(layer) && layer >= 0 && layer < spec.num_layers && (i === 0 || layer > layers[i - 1]));
    if (!valid) fail(`sliding_window.layers must be ascending layer indices below num_layers = ${spec.num_layers}, got [${layers.join(", ")}]`);
  }
  const positions = spec.positions;
  switch (positions.kind) {
    case "rope": {
      const { head_dim, rotary_dim, theta, scaling, layout } = positions.rope;
      if (head_dim !== spec.head_dim) fail(`rope.head_dim (${head_dim}) differs from head_dim (${spec.head_dim})`);
      if (!Number.isInteger(rotary_dim) || rotary_dim < 2 || rotary_dim % 2 !== 0 || rotary_dim > head_dim) {
        fail(`rope.rotary_dim must be even and in [2, head_dim = ${head_dim}], got ${rotary_dim}`);
      }
      const ropeProblem = ropeValuesProblem(theta, scaling);
      if (ropeProblem) fail(ropeProblem);
      if (layout !== "rotate_half" && layout !== "interleaved") fail(`unknown rope.layout ${String(layout)}`);
      break;
    }
    case "alibi":
      if (positions.positions !== "mask_cumsum" && positions.positions !== "key_index") {
        fail(`unknown alibi positions ${String(positions.positions)}`);
      }
      break;
    case "learned":
      if (!Number.isInteger(positions.max_positions) || positions.max_positions < 1) {
        fail(`learned max_positions must be a positive integer, got ${positions.max_positions}`);
      }
      break;
    default:
      fail(`unknown positions kind ${String((positions as { kind: unknown }).kind)}`);
  }
}

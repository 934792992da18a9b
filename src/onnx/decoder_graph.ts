/**
 * Builds an ONNX decoder that follows the transformers.js decoder contract from a DecoderSpec and its weights.
 *
 * Inputs: `input_ids` and `position_ids` [batch_size, sequence_length] (position_ids only for RoPE and learned
 * positions, and RoPE graphs may go without), `attention_mask` [batch_size, total_sequence_length], and per layer
 * `past_key_values.{i}.key|value` [batch_size, num_kv_heads, past_sequence_length, head_dim]; optionally, as
 * Optimum exports have them, the int64 scalar `num_logits_to_keep` (0: every position) and the bool
 * `use_cache_branch` of a merged decoder (false: the past is ignored). Outputs: `logits` and per layer
 * `present.{i}.key|value` = Concat(past, new) along the sequence axis, keys stored after RoPE.
 *
 * With `new_kv_only`, the graph also serves a cache that lives in fixed buffers (src/onnx/new_kv_only.ts):
 * attention reads the past and the new keys separately (scores are concatenated, not keys), and when the mask
 * marks the new tokens with NEW_TOKEN_MASK_VALUE the presents are the new tokens' keys and values alone, so a
 * step copies nothing of the past. Fed 0/1 masks, as transformers.js feeds them, it is the graph above.
 *
 * With P cached slots and n new tokens, new token k sits at slot P + k and attends to slot j iff j <= P + k and
 * attention_mask[b, j] == 1. RoPE and learned positions come only from `position_ids`, never from slot indices
 * (RoPE angles are computed at run time, so positions past the trained length work), or, in a RoPE graph
 * without `position_ids`, from the new tokens' slot indices: that is what lets an attention-sink cache evict
 * keys and re-position the rest. ALiBi distances come from slot indices
 * (`key_index`) or from counting attended slots in the mask (`mask_cumsum`).
 */
import { mlpHasBias, weightShapes, type DecoderSpec } from "../architecture/decoder_spec.js";
import { ropeAttentionFactor, ropeInverseFrequencies, type RopeSpec } from "../positions/rope.js";
import { alibiSlopes } from "../positions/alibi.js";
import { NEW_KV_ONLY_OUTPUT, NEW_TOKEN_MASK_VALUE } from "./new_kv_only.js";
import { GraphBuilder } from "./graph_builder.js";
import { DataType, type AttributeDef, type ExternalRange, type GraphDef, type ValueInfoDef } from "./onnx_model.js";
import type { Deferred } from "./protobuf.js";
import { floatDtype, Q4_BLOCK_SIZE, storedDims, type StoredWeight, type WeightDtype, type WeightEncoding } from "./weight_storage.js";

/** The ONNX element type of each weight encoding. */
const ENCODED_TYPE: Record<WeightEncoding, DataType> = {
  fp32: DataType.FLOAT,
  fp16: DataType.FLOAT16,
  int8: DataType.INT8,
  int8_scale: DataType.FLOAT,
  q4_blocks: DataType.UINT8,
  q4_scales: DataType.FLOAT,
  q4_scales_fp16: DataType.FLOAT16,
};

/**
 * Added to the scores of slots a query may not see. Finite on purpose: a query whose slots are all masked
 * (a left-padding position) then gets an arbitrary but finite output instead of NaN.
 */
const MASKED_SCORE = -1e9;
/** The most negative finite float16. */
const FLOAT16_LOWEST = -65504;

const intAttribute = (name: string, value: number): AttributeDef => ({ name, kind: "int", value });
const intsAttribute = (name: string, value: readonly number[]): AttributeDef => ({ name, kind: "ints", value });
const floatAttribute = (name: string, value: number): AttributeDef => ({ name, kind: "float", value });

/** Decides where a weight's bytes go: inline (produced at write time) or a range of the external data file. */
export type WeightPlacement = (weight: StoredWeight) => Deferred<StoredWeight> | ExternalRange;

/** Per-forward values every layer's attention shares. */
interface AttentionInputs {
  /** Added to the scores: [batch, 1 or num_heads, sequence_length, total_sequence_length]. */
  bias: string;
  /** The same, also masking slots at least `sliding_window.size` behind the query (sliding layers only). */
  slidingBias?: string;
  rotary?: RotaryTables;
}

/** Cache slot indices of the new tokens (query slots) and of every slot (key slots), int64. */
interface SlotIndices {
  /** [n] */
  querySlots: string;
  /** [n, 1] */
  queryColumn: string;
  /** [1, T] */
  keyRow: string;
}

/**
 * RoPE as x' = x * cos + x[partner] * sin over the rotating dims, where `partner` maps each dim to the other
 * member of its pair and `sin` carries the pair's sign; this covers both pair layouts with one formula.
 */
interface RotaryTables {
  /** [batch, 1, sequence_length, rotary_dim] */
  cos: string;
  sin: string;
  /** int64 [rotary_dim]: the index of each dim's pair partner. */
  partner: string;
  rotaryDim: number;
}

/** How an exporter shaped the graph: element types and the optional inputs it declares. */
export interface GraphStyle {
  /** The element types of weights, KV cache and logits (fp16 exports keep the last two in float16). */
  weights: WeightDtype;
  kv: WeightDtype;
  logits: WeightDtype;
  /** Whether RoPE graphs take `position_ids` (learned positions always do, ALiBi never). */
  position_ids: boolean;
  num_logits_to_keep: boolean;
  use_cache_branch: boolean;
  /**
   * How attention is written: standard ONNX ops (as Optimum exports it), or onnxruntime's fused contrib ops as
   * onnxruntime-genai's model builder emits them: `RotaryEmbedding` on position_ids + `MultiHeadAttention`
   * with an additive mask bias, or `GroupQueryAttention` (rotary inside, positions from `seqlens_k`; a
   * `position_ids` input, if declared, goes unused, as in some genai exports).
   */
  attention: AttentionOps;
  /** Residual adds fused into the next norm (`SkipSimplifiedLayerNormalization`, `SkipLayerNormalization`). */
  fused_norms: boolean;
  /** Rows of the cos/sin tables the contrib attention ops read (the positions the graph can address). */
  rotary_table_length: number;
  /** Whether presents can be the new tokens alone, for a cache written in place (see the header). */
  new_kv_only: boolean;
}

/**
 * Whether a graph of this spec and style can serve a cache written in place: positions must come from
 * `position_ids`, since slot indices in a fixed buffer are not the tokens' slots in the stream (which ALiBi
 * distances, sliding windows and position-less RoPE graphs read).
 */
export function canReturnNewKvOnly(spec: DecoderSpec, style: Pick<GraphStyle, "position_ids" | "attention" | "use_cache_branch">): boolean {
  return spec.positions.kind !== "alibi" && style.position_ids && !spec.sliding_window && style.attention === "standard" && !style.use_cache_branch;
}

export type AttentionOps = "standard" | "MultiHeadAttention" | "GroupQueryAttention";

/** The decoder graph of a validated spec; where each weight's bytes go is `place`'s decision. */
export function decoderGraph(spec: DecoderSpec, style: GraphStyle, place: WeightPlacement): GraphDef<StoredWeight> {
  return new DecoderGraph(spec, style, place).build();
}

class DecoderGraph {
  private readonly g = new GraphBuilder<StoredWeight>();
  private readonly shapes: Map<string, number[]>;
  /** Graph value of each stored weight, so a weight used twice is stored (and loaded) once. */
  private readonly weightValues = new Map<string, string>();

  private readonly dtype: WeightDtype;
  private readonly kvDtype: WeightDtype;
  private readonly logitsDtype: WeightDtype;
  /** Where RoPE and learned positions come from: the `position_ids` input, or the new tokens' slots. */
  private positionIds = "position_ids";
  /** Built on first use and shared by every layer. */
  private rotary?: { cos: string; sin: string };
  private readonly halfBiases = new Map<string, string>();
  private readonly quantizedInputs = new Map<string, { codes: string; scale: string; zeroPoint: string }>();
  private gqaLengths?: { seqlens_k: string; total: string };
  /** new_kv_only graphs: where the past's slots end in the scores, and whether to return new-only presents. */
  private slotSplit?: { pastEnd: string; newKvOnly: string };
  /** new_kv_only graphs: each layer's new keys and values, in the cache's type, for presentsOfEitherKind. */
  private readonly newKv: { past: string; present: string; stored: string }[] = [];

  constructor(
    private readonly spec: DecoderSpec,
    private readonly style: GraphStyle,
    private readonly place: WeightPlacement,
  ) {
    this.shapes = weightShapes(spec);
    this.dtype = style.weights;
    this.kvDtype = style.kv;
    this.logitsDtype = style.logits;
    if (spec.positions.kind === "learned" && !style.position_ids) {
      throw new Error("graph: learned positions are looked up by position_ids, so the graph must take them");
    }
    if (style.attention !== "standard") {
      if (spec.positions.kind !== "rope") throw new Error(`graph: ${style.attention} graphs are built for RoPE models only`);
      if (style.attention === "MultiHeadAttention" && (spec.num_kv_heads !== spec.num_heads || !style.position_ids)) {
        throw new Error("graph: MultiHeadAttention graphs need as many key/value heads as query heads, and position_ids");
      }
      // GroupQueryAttention reads no mask, so a sliding window would have to be its local_window_size, which
      // counts differently from the mask bias the other graphs window with.
      if (style.attention === "GroupQueryAttention" && spec.sliding_window) {
        throw new Error("graph: GroupQueryAttention graphs cannot apply a sliding window; export this model with attention \"standard\" or \"MultiHeadAttention\"");
      }
    }
    if (style.new_kv_only && !canReturnNewKvOnly(spec, style)) {
      throw new Error("graph: new_kv_only needs standard attention, position_ids, no sliding window and no use_cache_branch");
    }
  }

  build(): GraphDef<StoredWeight> {
    const { spec, g } = this;
    const { num_kv_heads, head_dim } = spec;
    const inputs: ValueInfoDef[] = [
      { name: "input_ids", elemType: DataType.INT64, dims: ["batch_size", "sequence_length"] },
      { name: "attention_mask", elemType: DataType.INT64, dims: ["batch_size", "total_sequence_length"] },
    ];
    const takesPositions = spec.positions.kind !== "alibi" && this.style.position_ids;
    if (takesPositions) {
      inputs.push({ name: "position_ids", elemType: DataType.INT64, dims: ["batch_size", "sequence_length"] });
    }
    if (this.style.num_logits_to_keep) inputs.push({ name: "num_logits_to_keep", elemType: DataType.INT64, dims: [] });
    if (this.style.use_cache_branch) inputs.push({ name: "use_cache_branch", elemType: DataType.BOOL, dims: [1] });
    const outputs: ValueInfoDef[] = [
      {
        name: "logits",
        elemType: this.logitsDtype === "fp16" ? DataType.FLOAT16 : DataType.FLOAT,
        dims: ["batch_size", "sequence_length", spec.vocab_size],
      },
    ];
    for (let i = 0; i < spec.num_layers; i++) {
      for (const kind of ["key", "value"]) {
        const pastDims = ["batch_size", num_kv_heads, "past_sequence_length", head_dim];
        const kvType = this.kvDtype === "fp16" ? DataType.FLOAT16 : DataType.FLOAT;
        inputs.push({ name: `past_key_values.${i}.${kind}`, elemType: kvType, dims: pastDims });
        const presentDims = ["batch_size", num_kv_heads, "total_sequence_length", head_dim];
        outputs.push({ name: `present.${i}.${kind}`, elemType: kvType, dims: presentDims });
      }
    }

    if (this.style.new_kv_only) {
      g.op("Identity", [g.int64([1], [])], NEW_KV_ONLY_OUTPUT);
      outputs.push({ name: NEW_KV_ONLY_OUTPUT, elemType: DataType.INT64, dims: [] });
    }

    const pasts = this.style.use_cache_branch ? this.cacheBranch() : (name: string) => name;
    const embedTokens = this.weight("model.embed_tokens.weight");
    let hidden = g.op("Gather", [embedTokens, "input_ids"], "model.embed_tokens.output", [intAttribute("axis", 0)]);
    const multiplier = spec.embedding_multiplier ?? 1;
    if (multiplier !== 1) hidden = g.op("Mul", [hidden, g.float32([multiplier], [])], "model.embed_tokens.scaled");
    if (spec.positions.kind === "learned") {
      const embedPositions = this.weight("model.embed_positions.weight");
      const positions = g.op("Gather", [embedPositions, "position_ids"], "model.embed_positions.output", [
        intAttribute("axis", 0),
      ]);
      hidden = g.op("Add", [hidden, positions], "model.embeddings");
    }
    const attention = this.attentionInputs(takesPositions, pasts);
    const block = spec.block ?? "sequential";
    let residual = hidden;
    let normed = this.norm("model.layers.0.input_layernorm", hidden);
    for (let i = 0; i < spec.num_layers; i++) {
      const prefix = `model.layers.${i}`;
      const sliding = spec.sliding_window?.layers.includes(i) ?? false;
      const attended = this.attention(i, normed, sliding ? attention.slidingBias! : attention.bias, attention.rotary, pasts);
      let mlp: string;
      if (block === "sequential") {
        ({ normed, sum: residual } = this.addAndNorm(`${prefix}.post_attention_layernorm`, residual, attended));
        mlp = this.mlp(prefix, normed);
      } else {
        // Parallel: the MLP reads the layer's input, not the attention's output.
        mlp = this.mlp(prefix, block === "parallel" ? this.norm(`${prefix}.post_attention_layernorm`, residual) : normed);
        residual = g.op("Add", [residual, attended], `${prefix}.attention_residual`);
      }
      const next = i + 1 < spec.num_layers ? `model.layers.${i + 1}.input_layernorm` : "model.norm";
      ({ normed, sum: residual } = this.addAndNorm(next, residual, mlp));
    }
    if (this.style.num_logits_to_keep) normed = this.lastPositions(normed, "num_logits_to_keep");
    const logitsName = this.logitsDtype === "fp16" ? "logits.float32" : "logits";
    // A tied head multiplies by the embedding table, which stays unquantized.
    const logits = spec.tie_word_embeddings
      ? g.op("MatMul", [normed, g.op("Transpose", [embedTokens], "lm_head.tied_weight", [intsAttribute("perm", [1, 0])])], logitsName)
      : this.linear(normed, "lm_head.weight", logitsName);
    if (this.logitsDtype === "fp16") g.op("Cast", [logits], "logits", [intAttribute("to", DataType.FLOAT16)]);
    if (this.style.new_kv_only) this.presentsOfEitherKind();
    return { name: "decoder", nodes: g.nodes, initializers: g.initializers, inputs, outputs };
  }

  /** A float32 graph value holding a checkpoint weight, `transposed` to [in, out] for linear layers. */
  private weight(name: string, transposed = false): string {
    const storedName = transposed ? `${name}.T` : name;
    const known = this.weightValues.get(storedName);
    if (known !== undefined) return known;
    const encoding = floatDtype(this.dtype);
    let value = this.stored(name, storedName, transposed, encoding);
    if (encoding === "fp16") {
      value = this.g.op("Cast", [value], `${storedName}.float32`, [intAttribute("to", DataType.FLOAT)]);
    }
    this.weightValues.set(storedName, value);
    return value;
  }

  /** One initializer holding (a part of) a checkpoint weight. */
  private stored(name: string, storedName: string, transposed: boolean, encoding: WeightEncoding): string {
    const shape = this.shapes.get(name);
    if (!shape) throw new Error(`internal: the graph uses ${name}, which weightShapes does not list`);
    const stored: StoredWeight = { name, shape, transposed, encoding };
    return this.g.initializer({ name: storedName, dataType: ENCODED_TYPE[encoding], dims: storedDims(stored), data: this.place(stored) });
  }

  /**
   * x [.., in] times a checkpoint linear weight [out, in], as the dtype stores it: a float MatMul; q8 as
   * onnxruntime's dynamic quantization writes it (x quantized per call by DynamicQuantizeLinear, an integer
   * MatMul, both scales applied after); q4 and q4f16 as com.microsoft MatMulNBits (q4f16 in float16).
   */
  private linear(x: string, name: string, output: string): string {
    const { g } = this;
    const [outFeatures, inFeatures] = this.shapes.get(name)!;
    switch (this.dtype) {
      case "fp32":
      case "fp16":
        return g.op("MatMul", [x, this.weight(name, true)], output);
      case "q8": {
        const quantized = this.dynamicallyQuantized(x);
        const codes = this.stored(name, `${name}.int8`, true, "int8");
        const scale = this.stored(name, `${name}.scale`, false, "int8_scale");
        const product = g.op("MatMulInteger", [quantized.codes, codes, quantized.zeroPoint, g.int8Zero()], `${output}.int32`);
        const float = g.op("Cast", [product], `${output}.unscaled`, [intAttribute("to", DataType.FLOAT)]);
        const scales = g.op("Mul", [quantized.scale, scale], `${output}.scale`);
        return g.op("Mul", [float, scales], output);
      }
      case "q4":
      case "q4f16": {
        const half = this.dtype === "q4f16";
        const blocks = this.stored(name, `${name}.q4`, false, "q4_blocks");
        const scales = this.stored(name, `${name}.q4_scales`, false, half ? "q4_scales_fp16" : "q4_scales");
        const input = half ? g.op("Cast", [x], `${output}.input.float16`, [intAttribute("to", DataType.FLOAT16)]) : x;
        const attributes = [intAttribute("K", inFeatures), intAttribute("N", outFeatures), intAttribute("bits", 4), intAttribute("block_size", Q4_BLOCK_SIZE)];
        if (!half) return g.contrib("MatMulNBits", [input, blocks, scales], [output], attributes)[0];
        const product = g.contrib("MatMulNBits", [input, blocks, scales], [`${output}.matmul_nbits`], attributes)[0];
        return g.op("Cast", [product], output, [intAttribute("to", DataType.FLOAT)]);
      }
    }
  }

  /** The linear layer `layer` (its `.weight`, and its `.bias` when it has one) applied to x. */
  private projection(x: string, layer: string, output: string, hasBias: boolean): string {
    const product = this.linear(x, `${layer}.weight`, output);
    return hasBias ? this.g.op("Add", [product, this.weight(`${layer}.bias`)], `${output}.biased`) : product;
  }

  /** DynamicQuantizeLinear of a graph value, once per value (q, k and v share their input's). */
  private dynamicallyQuantized(x: string): { codes: string; scale: string; zeroPoint: string } {
    let quantized = this.quantizedInputs.get(x);
    if (!quantized) {
      quantized = { codes: `${x}.uint8`, scale: `${x}.uint8_scale`, zeroPoint: `${x}.uint8_zero_point` };
      this.g.multiOutputOp("DynamicQuantizeLinear", [x], [quantized.codes, quantized.scale, quantized.zeroPoint], []);
      this.quantizedInputs.set(x, quantized);
    }
    return quantized;
  }

  private unsqueeze(input: string, axes: readonly number[], output: string): string {
    return this.g.op("Unsqueeze", [input, this.g.int64(axes)], output);
  }

  /** A dimension of a graph input as an int64 scalar. */
  private dimension(input: string, axis: number, output: string): string {
    const shape = this.g.op("Shape", [input], `${input}.shape`);
    return this.g.op("Gather", [shape, this.g.int64([axis], [])], output, [intAttribute("axis", 0)]);
  }

  /** x [B, n, H] cut to its last `count` positions, all of them when `count` is 0 (Python's x[:, -0:]). */
  private lastPositions(x: string, count: string): string {
    const { g } = this;
    const start = this.unsqueeze(g.op("Neg", [count], `${count}.negated`), [0], `${count}.start`);
    return g.op("Slice", [x, start, g.int64([Number.MAX_SAFE_INTEGER]), g.int64([1])], `${x}.kept`);
  }

  /**
   * A merged decoder's choice of past, as one If on `use_cache_branch`: the cache inputs as they are, or
   * emptied (the first pass of Optimum's merged decoders ignores whatever past it is given).
   */
  private cacheBranch(): (past: string) => string {
    const { g, spec } = this;
    const names: string[] = [];
    for (let i = 0; i < spec.num_layers; i++) names.push(`past_key_values.${i}.key`, `past_key_values.${i}.value`);
    const kvType = this.kvDtype === "fp16" ? DataType.FLOAT16 : DataType.FLOAT;
    // Branch constants live in the outer graph: a subgraph may read outer values but not redefine names.
    const [zero, sequenceAxis] = [g.int64([0]), g.int64([2])];
    const branch = (kind: "cached" | "empty"): GraphDef => {
      const b = new GraphBuilder<never>();
      const outputs = names.map((name) => {
        const output = `${name}.${kind}`;
        if (kind === "cached") b.op("Identity", [name], output);
        else b.op("Slice", [name, zero, zero, sequenceAxis], output);
        return { name: output, elemType: kvType, dims: ["batch_size", spec.num_kv_heads, "past_sequence_length", spec.head_dim] };
      });
      return { name: `use_cache_branch.${kind}`, nodes: b.nodes, initializers: [], inputs: [], outputs };
    };
    const condition = g.op("Squeeze", ["use_cache_branch", zero], "use_cache_branch.scalar");
    const chosen = names.map((name) => `${name}.chosen`);
    g.multiOutputOp("If", [condition], chosen, [
      { name: "then_branch", kind: "graph", value: branch("cached") },
      { name: "else_branch", kind: "graph", value: branch("empty") },
    ]);
    return (past) => `${past}.chosen`;
  }

  /**
   * new_kv_only graphs: one If for all presents, on whether the mask asked for new-only ones: the new keys and
   * values alone, or past + new as transformers.js expects.
   */
  private presentsOfEitherKind(): void {
    const { g, spec } = this;
    const kvType = this.kvDtype === "fp16" ? DataType.FLOAT16 : DataType.FLOAT;
    const branch = (kind: "new" | "whole"): GraphDef => {
      const b = new GraphBuilder<never>();
      const outputs = this.newKv.map(({ past, present, stored }) => {
        const output = `${present}.${kind}`;
        if (kind === "new") b.op("Identity", [stored], output);
        else b.op("Concat", [past, stored], output, [intAttribute("axis", 2)]);
        return { name: output, elemType: kvType, dims: ["batch_size", spec.num_kv_heads, "present_sequence_length", spec.head_dim] };
      });
      return { name: `presents.${kind}`, nodes: b.nodes, initializers: [], inputs: [], outputs };
    };
    g.multiOutputOp("If", [this.slotSplit!.newKvOnly], this.newKv.map(({ present }) => present), [
      { name: "then_branch", kind: "graph", value: branch("new") },
      { name: "else_branch", kind: "graph", value: branch("whole") },
    ]);
  }

  /** The causal + padding mask bias, ALiBi bias and RoPE tables, computed once per forward. */
  private attentionInputs(takesPositions: boolean, pasts: (past: string) => string): AttentionInputs {
    const { g, spec } = this;
    const one = g.int64([1], []);
    const pastLength = this.dimension(pasts("past_key_values.0.key"), 2, "attention.past_length");
    const newLength = this.dimension("input_ids", 1, "attention.new_length");
    const totalLength = this.dimension("attention_mask", 1, "attention.total_length");
    const keySlots = g.op("Range", [g.int64([0], []), totalLength, one], "attention.key_slots");
    const queryEnd = g.op("Add", [pastLength, newLength], "attention.query_end");
    const querySlots = g.op("Range", [pastLength, queryEnd, one], "attention.query_slots");
    const slots: SlotIndices = {
      querySlots,
      keyRow: this.unsqueeze(keySlots, [0], "attention.key_slots.row"), // [1, T]
      queryColumn: this.unsqueeze(querySlots, [1], "attention.query_slots.column"), // [n, 1]
    };

    const causal = g.op("LessOrEqual", [slots.keyRow, slots.queryColumn], "attention.causal"); // [n, T]
    // 1 attends; NEW_TOKEN_MASK_VALUE also attends, and asks for new-only presents (new_kv_only graphs).
    const attended = this.style.new_kv_only
      ? g.op("GreaterOrEqual", ["attention_mask", one], "attention.attended")
      : g.op("Equal", ["attention_mask", one], "attention.attended"); // [B, T]
    const attended4d = this.unsqueeze(attended, [1, 2], "attention.attended.4d"); // [B, 1, 1, T]
    const allowed = g.op("And", [causal, attended4d], "attention.allowed"); // [B, 1, n, T]
    const blocked = g.float32([MASKED_SCORE], []);
    const zero = g.float32([0], []);
    let bias = g.op("Where", [allowed, zero, blocked], "attention.mask_bias");
    let slidingBias: string | undefined;
    if (spec.sliding_window) {
      const behind = g.op("Sub", [slots.queryColumn, slots.keyRow], "attention.slots_behind"); // [n, T]
      const inWindow = g.op("Less", [behind, g.int64([spec.sliding_window.size], [])], "attention.in_window");
      const allowedInWindow = g.op("And", [allowed, inWindow], "attention.allowed_in_window");
      slidingBias = g.op("Where", [allowedInWindow, zero, blocked], "attention.sliding_mask_bias");
    }

    const positions = spec.positions;
    if (positions.kind === "alibi") {
      const alibi = this.alibiBias(positions.positions, positions.scaled_by_head_dim === true, slots);
      bias = g.op("Add", [alibi, bias], "attention.bias");
      if (slidingBias) slidingBias = g.op("Add", [alibi, slidingBias], "attention.sliding_bias");
    }
    if (!takesPositions) this.positionIds = this.unsqueeze(slots.querySlots, [0], "attention.query_slots.positions"); // [1, n]
    const standardRope = positions.kind === "rope" && this.style.attention === "standard";
    if (this.style.new_kv_only) {
      const maskMax = g.op("ReduceMax", ["attention_mask"], "attention.mask_max", [intAttribute("keepdims", 0)]);
      this.slotSplit = {
        pastEnd: this.unsqueeze(pastLength, [0], "attention.past_end"),
        newKvOnly: g.op("Equal", [maskMax, g.int64([NEW_TOKEN_MASK_VALUE], [])], "attention.new_kv_only"),
      };
    }
    return { bias, slidingBias, rotary: standardRope ? this.rotaryTables(positions.rope) : undefined };
  }

  /** -slope_h * (pos(query) - pos(key)), broadcastable to [B, H, n, T]. */
  private alibiBias(positions: "mask_cumsum" | "key_index", scaled: boolean, slots: SlotIndices): string {
    const { g, spec } = this;
    let distance: string;
    if (positions === "key_index") {
      distance = g.op("Sub", [slots.queryColumn, slots.keyRow], "alibi.distance"); // [n, T]
    } else {
      // Only attended slots count: pos(j) = cumsum(mask)[j] - 1.
      const counted = g.op("CumSum", ["attention_mask", g.int64([1], [])], "alibi.attended_count");
      const slotPositions = g.op("Sub", [counted, g.int64([1], [])], "alibi.slot_positions"); // [B, T]
      const queryPositions = g.op("Gather", [slotPositions, slots.querySlots], "alibi.query_positions", [
        intAttribute("axis", 1),
      ]); // [B, n]
      const difference = g.op(
        "Sub",
        [
          this.unsqueeze(queryPositions, [2], "alibi.query_positions.column"),
          this.unsqueeze(slotPositions, [1], "alibi.slot_positions.row"),
        ],
        "alibi.position_difference",
      ); // [B, n, T]
      distance = this.unsqueeze(difference, [1], "alibi.distance"); // [B, 1, n, T]
    }
    const scale = scaled ? 1 / Math.sqrt(spec.head_dim) : 1;
    const negativeSlopes = Array.from(alibiSlopes(spec.num_heads), (slope) => -slope * scale);
    const slopes = g.float32(negativeSlopes, [spec.num_heads, 1, 1], "alibi.negative_slopes");
    const distanceFloat = g.op("Cast", [distance], "alibi.distance.float", [intAttribute("to", DataType.FLOAT)]);
    return g.op("Mul", [distanceFloat, slopes], "alibi.bias");
  }

  private rotaryTables(rope: RopeSpec): RotaryTables {
    const { g } = this;
    const half = rope.rotary_dim / 2;
    const inverseFrequencies = g.float32(ropeInverseFrequencies(rope), [half], "rope.inv_freq");
    const positions = g.op("Cast", [this.positionIds], "rope.positions", [intAttribute("to", DataType.FLOAT)]);
    const positionColumn = this.unsqueeze(positions, [2], "rope.positions.column"); // [B or 1, n, 1]
    const angles = g.op("Mul", [positionColumn, inverseFrequencies], "rope.angles"); // [B, n, rotary_dim / 2]
    let cos = g.op("Cos", [angles], "rope.cos");
    let sin = g.op("Sin", [angles], "rope.sin");
    const factor = ropeAttentionFactor(rope);
    if (factor !== 1) {
      cos = g.op("Mul", [cos, g.float32([factor], [])], "rope.cos.scaled");
      sin = g.op("Mul", [sin, g.float32([factor], [])], "rope.sin.scaled");
    }

    const frequency = new Array<number>(rope.rotary_dim);
    const partner = new Array<number>(rope.rotary_dim);
    const sign = new Array<number>(rope.rotary_dim);
    for (let i = 0; i < half; i++) {
      const [first, second] = rope.layout === "rotate_half" ? [i, i + half] : [2 * i, 2 * i + 1];
      frequency[first] = frequency[second] = i;
      partner[first] = second;
      partner[second] = first;
      sign[first] = -1; // first' = first * cos - second * sin
      sign[second] = 1; // second' = second * cos + first * sin
    }
    const frequencyIndex = g.int64(frequency);
    const axis2 = [intAttribute("axis", 2)];
    const cosPerDim = g.op("Gather", [cos, frequencyIndex], "rope.cos.per_dim", axis2);
    const sinPerDim = g.op("Gather", [sin, frequencyIndex], "rope.sin.per_dim", axis2);
    const signedSin = g.op("Mul", [sinPerDim, g.float32(sign)], "rope.sin.signed");
    return {
      cos: this.unsqueeze(cosPerDim, [1], "rope.cos.by_head"),
      sin: this.unsqueeze(signedSin, [1], "rope.sin.by_head"),
      partner: g.int64(partner),
      rotaryDim: rope.rotary_dim,
    };
  }

  /** Rotates the leading rotary_dim dims of x [B, heads, n, head_dim]; the rest pass through. */
  private rotate(x: string, tables: RotaryTables): string {
    const { g, spec } = this;
    const { rotaryDim } = tables;
    let rotating = x;
    let passing: string | undefined;
    if (rotaryDim < spec.head_dim) {
      rotating = `${x}.rotating`;
      passing = `${x}.passing`;
      const sizes = g.int64([rotaryDim, spec.head_dim - rotaryDim]);
      g.multiOutputOp("Split", [x, sizes], [rotating, passing], [intAttribute("axis", 3)]);
    }
    const partners = g.op("Gather", [rotating, tables.partner], `${x}.partners`, [intAttribute("axis", 3)]);
    const rotated = g.op(
      "Add",
      [
        g.op("Mul", [rotating, tables.cos], `${x}.times_cos`),
        g.op("Mul", [partners, tables.sin], `${x}.partners_times_sin`),
      ],
      `${x}.rotated`,
    );
    if (passing === undefined) return rotated;
    return g.op("Concat", [rotated, passing], `${x}.with_rope`, [intAttribute("axis", 3)]);
  }

  private attention(index: number, x: string, bias: string, rotary: RotaryTables | undefined, pasts: (past: string) => string): string {
    if (this.style.attention !== "standard") return this.contribAttention(index, x, bias, pasts);
    const { g, spec } = this;
    const { num_heads: heads, num_kv_heads: kvHeads, head_dim: headDim } = spec;
    const prefix = `model.layers.${index}.self_attn`;
    const project = (name: "q" | "k" | "v", count: number) => {
      const flat = this.projection(x, `${prefix}.${name}_proj`, `${prefix}.${name}`, spec.qkv_bias === true);
      const split = g.op("Reshape", [flat, g.int64([0, 0, count, headDim])], `${prefix}.${name}.heads`);
      return g.op("Transpose", [split], `${prefix}.${name}.by_head`, [intsAttribute("perm", [0, 2, 1, 3])]);
    };
    let queries = project("q", heads);
    let keys = project("k", kvHeads);
    const values = project("v", kvHeads);
    if (rotary) {
      queries = this.rotate(queries, rotary);
      keys = this.rotate(keys, rotary);
    }
    // The cache holds keys and values in its own type; attention itself always runs in float32.
    const inCacheType = (kind: "key" | "value", fresh: string) =>
      this.kvDtype === "fp32" ? fresh : g.op("Cast", [fresh], `${prefix}.${kind}.float16`, [intAttribute("to", DataType.FLOAT16)]);
    const asFloat32 = (value: string, output: string) =>
      this.kvDtype === "fp32" ? value : g.op("Cast", [value], output, [intAttribute("to", DataType.FLOAT)]);
    // present = past + new.
    const cached = (kind: "key" | "value", fresh: string) => {
      const present = g.op("Concat", [pasts(`past_key_values.${index}.${kind}`), inCacheType(kind, fresh)], `present.${index}.${kind}`, [intAttribute("axis", 2)]);
      return asFloat32(present, `${prefix}.${kind}.cached`);
    };

    // GQA without copying keys: the query heads sharing a KV head are stacked along the sequence axis
    // ([B, H, n, D] -> [B, kvH, group * n, D]), so one MatMul per KV head serves its whole group.
    const grouped = heads !== kvHeads;
    const regroup = (value: string, shape: number[], output: string) =>
      grouped ? g.op("Reshape", [value, g.int64(shape)], output) : value;
    const scaled = g.op("Mul", [queries, g.float32([1 / Math.sqrt(headDim)], [])], `${prefix}.q.scaled`);
    const groupedQueries = regroup(scaled, [0, kvHeads, -1, headDim], `${prefix}.q.grouped`);
    const scoresWith = (keysOf: string, transposed: string, output: string) =>
      g.op("MatMul", [groupedQueries, g.op("Transpose", [keysOf], transposed, [intsAttribute("perm", [0, 1, 3, 2])])], output);
    const attend = (groupedScores: string, withValues: (probabilities: string) => string) => {
      const scores = regroup(groupedScores, [0, heads, -1, 0], `${prefix}.scores`);
      const biased = g.op("Add", [scores, bias], `${prefix}.scores.biased`);
      const probabilities = g.op("Softmax", [biased], `${prefix}.probabilities`, [intAttribute("axis", -1)]);
      return withValues(regroup(probabilities, [0, kvHeads, -1, 0], `${prefix}.probabilities.grouped`));
    };
    let groupedContext: string;
    if (!this.style.new_kv_only) {
      const allKeys = cached("key", keys);
      const allValues = cached("value", values);
      groupedContext = attend(scoresWith(allKeys, `${prefix}.k.transposed`, `${prefix}.scores.grouped`), (p) => g.op("MatMul", [p, allValues], `${prefix}.context.grouped`));
    } else {
      // Past and new slots apart: the scores [.., P + n] are concatenated instead of the keys, so the past is
      // only read. The presents are chosen once for all layers (presentsOfEitherKind).
      const pastKeys = asFloat32(`past_key_values.${index}.key`, `${prefix}.past_key.float32`);
      const pastValues = asFloat32(`past_key_values.${index}.value`, `${prefix}.past_value.float32`);
      const fresh = (kind: "key" | "value", value: string) => {
        const stored = inCacheType(kind, value);
        this.newKv.push({ past: `past_key_values.${index}.${kind}`, present: `present.${index}.${kind}`, stored });
        return asFloat32(stored, `${prefix}.new_${kind}.float32`);
      };
      const newKeys = fresh("key", keys);
      const newValues = fresh("value", values);
      const pastScores = scoresWith(pastKeys, `${prefix}.k.transposed`, `${prefix}.scores.past`);
      const newScores = scoresWith(newKeys, `${prefix}.new_k.transposed`, `${prefix}.scores.new`);
      const scores = g.op("Concat", [pastScores, newScores], `${prefix}.scores.grouped`, [intAttribute("axis", 3)]);
      groupedContext = attend(scores, (p) => {
        const { pastEnd } = this.slotSplit!;
        const axis = g.int64([3]);
        const pastPart = g.op("Slice", [p, g.int64([0]), pastEnd, axis], `${prefix}.probabilities.past`);
        const newPart = g.op("Slice", [p, pastEnd, g.int64([Number.MAX_SAFE_INTEGER]), axis], `${prefix}.probabilities.new`);
        const fromPast = g.op("MatMul", [pastPart, pastValues], `${prefix}.context.past`);
        const fromNew = g.op("MatMul", [newPart, newValues], `${prefix}.context.new`);
        return g.op("Add", [fromPast, fromNew], `${prefix}.context.grouped`);
      });
    }
    const context = regroup(groupedContext, [0, heads, -1, headDim], `${prefix}.context`);
    const byToken = g.op("Transpose", [context], `${prefix}.context.by_token`, [intsAttribute("perm", [0, 2, 1, 3])]);
    const merged = g.op("Reshape", [byToken, g.int64([0, 0, heads * headDim])], `${prefix}.context.merged`);
    return this.projection(merged, `${prefix}.o_proj`, `${prefix}.output`, spec.dense_bias === true);
  }

  /** residual + delta, and its norm: two ops, or one Skip*LayerNormalization in fused graphs. */
  private addAndNorm(prefix: string, residual: string, delta: string): { normed: string; sum: string } {
    const { g, spec } = this;
    if (!this.style.fused_norms) {
      const sum = g.op("Add", [residual, delta], `${prefix}.input`);
      return { normed: this.norm(prefix, sum), sum };
    }
    const normed = `${prefix}.output`;
    const sum = `${prefix}.input`;
    const [opType, weights] =
      spec.norm === "rms"
        ? ["SkipSimplifiedLayerNormalization", [this.weight(`${prefix}.weight`)]]
        : ["SkipLayerNormalization", [this.weight(`${prefix}.weight`), this.weight(`${prefix}.bias`)]];
    // Outputs: normed, mean, inverse std (unused), and the residual sum the next block adds to.
    g.contrib(opType, [delta, residual, ...weights], [normed, "", "", sum], [floatAttribute("epsilon", spec.norm_eps)]);
    return { normed, sum };
  }

  /** The cos and sin tables of the contrib ops, [rotary_table_length, rotary_dim / 2], in the cache's type. */
  private rotaryCaches(rope: RopeSpec): { cos: string; sin: string } {
    const { g } = this;
    const half = rope.rotary_dim / 2;
    const rows = this.style.rotary_table_length;
    const inverseFrequencies = ropeInverseFrequencies(rope);
    const factor = ropeAttentionFactor(rope);
    const cos = new Float32Array(rows * half);
    const sin = new Float32Array(rows * half);
    for (let p = 0; p < rows; p++) {
      for (let i = 0; i < half; i++) {
        // The angle rounds to float32 as the standard graph's Mul does.
        const angle = Math.fround(p * inverseFrequencies[i]);
        cos[p * half + i] = Math.cos(angle) * factor;
        sin[p * half + i] = Math.sin(angle) * factor;
      }
    }
    const table = (values: Float32Array, name: string) =>
      this.kvDtype === "fp16" ? g.float16(values, [rows, half], name) : g.float32(values, [rows, half], name);
    return { cos: table(cos, "cos_cache"), sin: table(sin, "sin_cache") };
  }

  /**
   * Attention from onnxruntime's contrib ops, in the cache's type (float16 caches make the op run in float16,
   * as genai's fp16 models do): projections, RoPE, attention with the past, output projection.
   */
  private contribAttention(index: number, x: string, bias: string, pasts: (past: string) => string): string {
    const { g, spec } = this;
    const prefix = `model.layers.${index}.self_attn`;
    const rope = (spec.positions as { kind: "rope"; rope: RopeSpec }).rope;
    const caches = (this.rotary ??= this.rotaryCaches(rope));
    const half = this.kvDtype === "fp16";
    const toCacheType = (value: string) => (half ? g.op("Cast", [value], `${value}.float16`, [intAttribute("to", DataType.FLOAT16)]) : value);
    const project = (name: "q" | "k" | "v") =>
      toCacheType(this.projection(x, `${prefix}.${name}_proj`, `${prefix}.${name}`, spec.qkv_bias === true));
    let [queries, keys] = [project("q"), project("k")];
    const values = project("v");
    const past = (kind: "key" | "value") => pasts(`past_key_values.${index}.${kind}`);
    const present = (kind: "key" | "value") => `present.${index}.${kind}`;
    const context = `${prefix}.context`;
    const interleaved = intAttribute("interleaved", rope.layout === "interleaved" ? 1 : 0);
    if (this.style.attention === "MultiHeadAttention") {
      const rotate = (value: string) =>
        g.contrib("RotaryEmbedding", [value, "position_ids", caches.cos, caches.sin], [`${value}.rotated`], [
          interleaved,
          intAttribute("num_heads", spec.num_heads),
          intAttribute("rotary_embedding_dim", rope.rotary_dim),
        ])[0];
      [queries, keys] = [rotate(queries), rotate(keys)];
      g.contrib("MultiHeadAttention", [queries, keys, values, "", "", half ? this.float16Bias(bias) : bias, past("key"), past("value")], [context, present("key"), present("value")], [
        intAttribute("num_heads", spec.num_heads),
      ]);
    } else {
      g.contrib(
        "GroupQueryAttention",
        [queries, keys, values, past("key"), past("value"), this.sequenceLengths.seqlens_k, this.sequenceLengths.total, caches.cos, caches.sin],
        [context, present("key"), present("value")],
        [
          intAttribute("num_heads", spec.num_heads),
          intAttribute("kv_num_heads", spec.num_kv_heads),
          intAttribute("do_rotary", 1),
          intAttribute("rotary_interleaved", rope.layout === "interleaved" ? 1 : 0),
        ],
      );
    }
    const merged = half ? g.op("Cast", [context], `${context}.float32`, [intAttribute("to", DataType.FLOAT)]) : context;
    return this.projection(merged, `${prefix}.o_proj`, `${prefix}.output`, spec.dense_bias === true);
  }

  /**
   * A mask bias in float16, with float16's lowest value for blocked slots (float32's -1e9 would be -inf); once
   * per bias, shared by the layers that read it.
   */
  private float16Bias(bias: string): string {
    const { g } = this;
    let half = this.halfBiases.get(bias);
    if (half === undefined) {
      const clamped = g.op("Max", [bias, g.float32([FLOAT16_LOWEST], [])], `${bias}.clamped`);
      half = g.op("Cast", [clamped], `${bias}.float16`, [intAttribute("to", DataType.FLOAT16)]);
      this.halfBiases.set(bias, half);
    }
    return half;
  }

  /** GroupQueryAttention's view of the cache, from the mask as genai's graphs compute it. */
  private get sequenceLengths(): { seqlens_k: string; total: string } {
    const { g } = this;
    if (!this.gqaLengths) {
      const attended = g.op("ReduceSum", ["attention_mask", g.int64([1])], "attention.attended_count", [intAttribute("keepdims", 0)]);
      const last = g.op("Sub", [attended, g.int64([1], [])], "attention.last_attended");
      const toInt32 = [intAttribute("to", DataType.INT32)];
      this.gqaLengths = {
        seqlens_k: g.op("Cast", [last], "seqlens_k", toInt32),
        total: g.op("Cast", ["attention.total_length"], "total_sequence_length", toInt32),
      };
    }
    return this.gqaLengths;
  }

  private norm(prefix: string, x: string): string {
    const { g, spec } = this;
    const weight = this.weight(`${prefix}.weight`);
    if (spec.norm === "layer") {
      return g.op("LayerNormalization", [x, weight, this.weight(`${prefix}.bias`)], `${prefix}.output`, [
        intAttribute("axis", -1),
        floatAttribute("epsilon", spec.norm_eps),
      ]);
    }
    // RMSNorm written out (the fused op needs opset 23): x / sqrt(mean(x^2) + eps) * w.
    const squared = g.op("Pow", [x, g.float32([2], [])], `${prefix}.squared`);
    const meanSquare = g.op("ReduceMean", [squared], `${prefix}.mean_square`, [
      intsAttribute("axes", [-1]),
      intAttribute("keepdims", 1),
    ]);
    const withEps = g.op("Add", [meanSquare, g.float32([spec.norm_eps], [])], `${prefix}.mean_square_eps`);
    const rms = g.op("Sqrt", [withEps], `${prefix}.rms`);
    const normalized = g.op("Div", [x, rms], `${prefix}.normalized`);
    return g.op("Mul", [normalized, weight], `${prefix}.output`);
  }

  private mlp(layerPrefix: string, x: string): string {
    const { g, spec } = this;
    const prefix = `${layerPrefix}.mlp`;
    const linear = (name: string, input: string) => this.projection(input, `${prefix}.${name}`, `${prefix}.${name}`, mlpHasBias(spec));
    if (spec.mlp === "swiglu" || spec.mlp === "geglu") {
      const gate = linear("gate_proj", x);
      const activated =
        spec.mlp === "swiglu"
          ? g.op("Mul", [gate, g.op("Sigmoid", [gate], `${prefix}.gate_sigmoid`)], `${prefix}.gate_silu`)
          : this.geluTanh(gate, `${prefix}.gate_gelu`);
      const product = g.op("Mul", [activated, linear("up_proj", x)], `${prefix}.gated`);
      return linear("down_proj", product);
    }
    const up = linear("up_proj", x);
    return linear("down_proj", spec.mlp === "gelu_exact" ? this.geluExact(up, `${prefix}.gelu`) : this.geluTanh(up, `${prefix}.gelu`));
  }

  /** 0.5 x (1 + erf(x / sqrt(2))), written out (the Gelu op needs opset 20). */
  private geluExact(x: string, prefix: string): string {
    const { g } = this;
    const erf = g.op("Erf", [g.op("Mul", [x, g.float32([Math.SQRT1_2], [])], `${prefix}.scaled`)], `${prefix}.erf`);
    const erfPlusOne = g.op("Add", [erf, g.float32([1], [])], `${prefix}.erf_plus_one`);
    return g.op("Mul", [g.op("Mul", [x, g.float32([0.5], [])], `${prefix}.half_x`), erfPlusOne], `${prefix}.output`);
  }

  /** 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), written out (the Gelu op needs opset 20). */
  private geluTanh(x: string, prefix: string): string {
    const { g } = this;
    const cube = g.op("Mul", [g.op("Mul", [x, x], `${prefix}.square`), x], `${prefix}.cube`);
    const cubeScaled = g.op("Mul", [cube, g.float32([0.044715], [])], `${prefix}.cube_scaled`);
    const inner = g.op("Add", [x, cubeScaled], `${prefix}.inner`);
    const scaled = g.op("Mul", [inner, g.float32([Math.sqrt(2 / Math.PI)], [])], `${prefix}.inner_scaled`);
    const tanh = g.op("Tanh", [scaled], `${prefix}.tanh`);
    const tanhPlusOne = g.op("Add", [tanh, g.float32([1], [])], `${prefix}.tanh_plus_one`);
    return g.op("Mul", [g.op("Mul", [x, g.float32([0.5], [])], `${prefix}.half_x`), tanhPlusOne], `${prefix}.output`);
  }
}

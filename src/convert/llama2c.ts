/**
 * llama2.c checkpoints (karpathy/llama2.c `export.py`), in all three layouts:
 * - legacy (version 0): 7 x int32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
 *   seq_len; a negative vocab_size means the classifier is stored separately), then fp32 tensors, each kind
 *   stacked over the layers, including two unused RoPE tables;
 * - version 1: a 256-byte header (magic "ak42", version, the 7 ints, a shared-classifier byte), then fp32
 *   tensors, norms first;
 * - version 2: as version 1 plus the quantization group size, with the norms in fp32 and every matrix as
 *   Q8_0: int8 values, then one fp32 scale per group.
 * Weights use Meta's interleaved RoPE layout; queries and keys are permuted into rotate_half on reading.
 */
import { weightShapes, type WeightTensor } from "../architecture/decoder_spec.js";
import { BoundedReader, type ByteSource } from "./bounded_reader.js";
import type { Checkpoint, TensorEntry } from "./checkpoint.js";
import { llamaDecoderSpec, llamaModelFiles, type LlamaModelInfo } from "./hf_llama.js";
import { readLlama2cTokenizer } from "./llama2c_tokenizer.js";
import { withRotateHalfQueryKey } from "./rope_permutation.js";
import { sentencePieceTokenizerFiles } from "./sentencepiece_tokenizer.js";
import { readFloats } from "./tensor_data.js";

/** "ak42" read as a little-endian uint32. */
const MAGIC = 0x616b3432;
const VERSIONED_HEADER_BYTES = 256;
const LEGACY_HEADER_BYTES = 28;
/** llama2.c's fixed hyper-parameters (run.c hard-codes them). */
const NORM_EPS = 1e-5;
const ROPE_THETA = 10000;
const MAX_SEQ_LEN = 1 << 24;

interface Header {
  version: 0 | 1 | 2;
  dim: number;
  hiddenDim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  seqLen: number;
  sharedClassifier: boolean;
  /** Q8_0 group size (version 2). */
  groupSize: number;
  /** Where the tensors start. */
  dataStart: number;
}

function readHeader(reader: BoundedReader): Header {
  if (reader.size < LEGACY_HEADER_BYTES) {
    throw reader.fail(`is ${reader.size} bytes, too short for a llama2.c checkpoint header`);
  }
  // Legacy files have no magic: their first field is dim.
  const versioned = reader.cursor().u32("the magic number") === MAGIC;
  const cursor = reader.cursor(versioned ? 4 : 0);
  let version: Header["version"] = 0;
  if (versioned) {
    const stored = cursor.i32("the version");
    if (stored !== 1 && stored !== 2) {
      throw reader.fail(`llama2.c export version ${stored} is not supported (supported: legacy, 1, 2)`);
    }
    version = stored;
  }
  const params = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"].map((name) =>
    cursor.i32(name),
  );
  const [dim, hiddenDim, layers, heads, kvHeads, signedVocab, seqLen] = params;
  let sharedClassifier = signedVocab > 0;
  let groupSize = 0;
  if (version > 0) {
    const flag = cursor.u8("the shared-classifier flag");
    if (flag > 1) throw reader.fail(`the shared-classifier flag is ${flag}, expected 0 or 1`);
    sharedClassifier = flag === 1;
    if (version === 2) groupSize = reader.requireInt(cursor.i32("the group size"), "the group size", 1, 1 << 20);
    if (signedVocab < 1) throw reader.fail(`vocab_size is ${signedVocab}, expected a positive integer`);
  }
  return {
    version,
    dim,
    hiddenDim,
    layers,
    heads,
    kvHeads,
    vocab: Math.abs(signedVocab),
    seqLen,
    sharedClassifier,
    groupSize,
    dataStart: version === 0 ? LEGACY_HEADER_BYTES : VERSIONED_HEADER_BYTES,
  };
}

/**
 * Opens a llama2.c checkpoint and then its tokenizer file (so a file that is no checkpoint at all is
 * reported as such first). Every tensor's place follows from the header, and their total must be exactly
 * the file's size.
 */
export function readLlama2cCheckpoint(model: ByteSource, openTokenizer: () => ByteSource): Checkpoint {
  const reader = new BoundedReader(model);
  const header = readHeader(reader);
  const notLlama2c = (problem: string) => reader.fail(`does not look like a llama2.c checkpoint: ${problem}`);
  const spec = llamaDecoderSpec(
    {
      vocab_size: header.vocab,
      hidden_size: header.dim,
      intermediate_size: header.hiddenDim,
      num_layers: header.layers,
      num_heads: header.heads,
      num_kv_heads: header.kvHeads,
      norm_eps: NORM_EPS,
      rope_theta: ROPE_THETA,
      tie_word_embeddings: header.sharedClassifier,
    },
    notLlama2c,
  );
  if (header.seqLen < 1 || header.seqLen > MAX_SEQ_LEN) {
    throw notLlama2c(`seq_len is ${header.seqLen}, expected an integer from 1 to ${MAX_SEQ_LEN}`);
  }
  // Every tensor is the spec's, in the order of the file's version; their total must be the file's size.
  const layout = new TensorLayout(reader, header, weightShapes(spec));
  const stacked = (suffix: string, storage: Storage) => {
    for (let i = 0; i < spec.num_layers; i++) layout.add(`model.layers.${i}.${suffix}`, storage);
  };
  const matrices = (storage: Storage) => {
    for (const suffix of ["q_proj", "k_proj", "v_proj", "o_proj"]) stacked(`self_attn.${suffix}.weight`, storage);
  };
  const mlp = (storage: Storage) => {
    // llama2.c's w1, w2, w3.
    for (const suffix of ["gate_proj", "down_proj", "up_proj"]) stacked(`mlp.${suffix}.weight`, storage);
  };
  if (header.version === 0) {
    layout.add("model.embed_tokens.weight", "f32");
    stacked("input_layernorm.weight", "f32");
    matrices("f32");
    stacked("post_attention_layernorm.weight", "f32");
    mlp("f32");
    layout.add("model.norm.weight", "f32");
    // The precomputed RoPE cos and sin tables, which run.c ignores.
    layout.skip(reader.checkedProduct([2, header.seqLen, spec.head_dim / 2, 4], "the RoPE tables"), "the RoPE table section");
  } else {
    const storage: Storage = header.version === 1 ? "f32" : "q8";
    stacked("input_layernorm.weight", "f32");
    stacked("post_attention_layernorm.weight", "f32");
    layout.add("model.norm.weight", "f32");
    layout.add("model.embed_tokens.weight", storage);
    matrices(storage);
    mlp(storage);
  }
  if (!header.sharedClassifier) layout.add("lm_head.weight", header.version === 2 ? "q8" : "f32");
  if (layout.end !== reader.size) {
    const { dim, hiddenDim, layers, vocab } = header;
    throw reader.fail(
      `the header (dim ${dim}, hidden_dim ${hiddenDim}, ${layers} layers, vocab ${vocab}) describes ` +
        `${layout.end} bytes, but the file has ${reader.size}`,
    );
  }

  const info: LlamaModelInfo = { maxPositions: header.seqLen, bosId: 1, eosId: 2 };
  const tokenizer = openTokenizer();
  const vocabulary = readLlama2cTokenizer(tokenizer, spec.vocab_size, header.seqLen);
  const tokenizerFiles = sentencePieceTokenizerFiles(vocabulary, tokenizer.name);
  return {
    source: reader.name,
    inputs: [model.name, tokenizer.name],
    spec,
    tensors: withRotateHalfQueryKey(spec, layout.entries),
    files: llamaModelFiles(spec, info, tokenizerFiles),
    vocabulary,
    close() {
      model.close();
      tokenizer.close();
    },
  };
}

type Storage = "f32" | "q8";

/** Lays tensors out one after another from the header's end, checking each against the file. */
class TensorLayout {
  readonly entries = new Map<string, TensorEntry>();
  end: number;

  constructor(
    private readonly reader: BoundedReader,
    private readonly header: Header,
    private readonly shapes: ReadonlyMap<string, number[]>,
  ) {
    this.end = header.dataStart;
  }

  /** The next tensor. */
  add(name: string, storage: Storage): void {
    const { reader, header } = this;
    const shape = this.shapes.get(name)!;
    const count = reader.checkedProduct(shape, name);
    const offset = this.end;
    let byteLength = count * 4;
    let read: () => Float32Array = () => readFloats(reader, offset, count, "f32", name);
    if (storage === "q8") {
      const { groupSize } = header;
      if (count % groupSize !== 0) {
        throw reader.fail(`${name} has ${count} values, not a multiple of the group size ${groupSize}`);
      }
      byteLength = count + (count / groupSize) * 4;
      read = () => dequantizeQ8(reader, offset, count, groupSize, name);
    }
    // Checked here, so a header that describes more than the file holds fails at the first tensor past the end.
    reader.checkRange(offset, byteLength, name);
    this.end += byteLength;
    this.entries.set(name, { shape, load: (): WeightTensor => ({ shape, data: read() }) });
  }

  skip(byteLength: number, what: string): void {
    this.reader.checkRange(this.end, byteLength, what);
    this.end += byteLength;
  }
}

/** Q8_0 as llama2.c's version 2 stores it: `count` int8 values, then one fp32 scale per group. */
function dequantizeQ8(reader: BoundedReader, offset: number, count: number, groupSize: number, what: string): Float32Array {
  const values = new Int8Array(reader.alignedBytes(offset, count, what), 0, count);
  const scales = readFloats(reader, offset + count, count / groupSize, "f32", `${what} scales`);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = values[i] * scales[Math.floor(i / groupSize)];
  return out;
}

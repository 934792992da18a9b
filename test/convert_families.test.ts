/**
 * Hugging Face safetensors directories of every family the converter reads (Llama, Mistral, Qwen2, Gemma,
 * Phi-3, and Falcon's original multi-query and new decoder architectures), written here with each family's
 * own weight names, fused projections and conventions from random weights. Each is converted; the converted
 * model's logits under plain transformers.js must equal the oracle's on the same weights, and the perplexity
 * benchmark and generate run on it from the command line, the benchmark's NLLs checked against the oracle.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as transformers from "@huggingface/transformers";
import { DynamicCache, Tensor } from "@huggingface/transformers";
import type { DecoderSpec, WeightTensor } from "../src/architecture/decoder_spec.js";
import { convertCheckpoint, ConversionError } from "../src/convert/index.js";
import { parseBenchmarkCsv, type Experiment } from "../src/perplexity/index.js";
import { llamaKeys } from "./support/fixtures/families.js";
import { randomDecoderWeights } from "./support/fixtures/random_weights.js";
import { writeTinyTokenizer } from "./support/fixtures/tiny_tokenizer.js";
import { StreamingReference, referenceNll, type ReferencePolicy } from "./support/reference/streaming_reference.js";
import { runCli } from "./support/cli.js";
import { safetensorsFile } from "./support/checkpoint_files.js";
import { logitsAt, maxAbsDiff } from "./support/streaming.js";

transformers.env.allowRemoteModels = false;

const TOLERANCE = 1e-4;
const SINKS = 2;
const WINDOW = 8;
const TOKENS = 24;
const SLIDING_WINDOW = 12;
const TEXT = "the cat sat on the mat. she was happy, and the dog ran to the park!\nwhat a day it was.\n".repeat(2);

const root = await mkdtemp(join(tmpdir(), "attention-sinks-convert-families-"));
after(() => rm(root, { recursive: true, force: true }));

type Weights = Map<string, WeightTensor>;
type Named = [string, WeightTensor][];

interface HfFixture {
  name: string;
  spec: DecoderSpec;
  config: Record<string, unknown>;
  /** The checkpoint's tensors, under the family's own names, from weights under the spec's. */
  checkpoint(spec: DecoderSpec, weights: Weights): Named;
}

const base: DecoderSpec = {
  vocab_size: 64,
  hidden_size: 32,
  num_layers: 2,
  num_heads: 4,
  num_kv_heads: 2,
  head_dim: 8,
  intermediate_size: 48,
  norm: "rms",
  norm_eps: 1e-6,
  mlp: "swiglu",
  tie_word_embeddings: false,
  positions: { kind: "rope", rope: { layout: "rotate_half", head_dim: 8, rotary_dim: 8, theta: 10000 } },
};

/** A Hugging Face Llama-style config.json of `spec`, as the checkpoints' own configs write it. */
function llamaConfig(model_type: string, architecture: string, spec: DecoderSpec): Record<string, unknown> {
  return {
    ...llamaKeys(model_type, architecture, spec),
    rope_theta: 10000,
    hidden_act: "silu",
    tie_word_embeddings: spec.tie_word_embeddings,
    torch_dtype: "float32",
  };
}

/** Names already the spec's (Llama, Mistral, Qwen2); a tied head is stored once, as the embedding. */
const sameNames = (_spec: DecoderSpec, weights: Weights): Named => [...weights];

const rows = (tensors: WeightTensor[]): WeightTensor => {
  const columns = tensors[0].shape[1];
  const count = tensors.reduce((sum, tensor) => sum + tensor.shape[0], 0);
  const data = new Float32Array(count * columns);
  let offset = 0;
  for (const tensor of tensors) {
    data.set(tensor.data, offset);
    offset += tensor.data.length;
  }
  return { shape: [count, columns], data };
};

/** Rows [from, from + count) of a matrix. */
const slice = (tensor: WeightTensor, from: number, count: number): WeightTensor => {
  const columns = tensor.shape[1];
  return { shape: [count, columns], data: tensor.data.slice(from * columns, (from + count) * columns) };
};

/** Phi-3 stores q, k and v as one qkv_proj, and gate and up as one gate_up_proj. */
function phi3Names(spec: DecoderSpec, weights: Weights): Named {
  const named: Named = [];
  const fused = new Set<string>();
  for (let i = 0; i < spec.num_layers; i++) {
    const layer = `model.layers.${i}`;
    const parts = (names: string[]) => names.map((name) => (fused.add(`${layer}.${name}`), weights.get(`${layer}.${name}`)!));
    named.push([`${layer}.self_attn.qkv_proj.weight`, rows(parts(["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"]))]);
    named.push([`${layer}.mlp.gate_up_proj.weight`, rows(parts(["mlp.gate_proj.weight", "mlp.up_proj.weight"]))]);
  }
  return [...named, ...[...weights].filter(([name]) => !fused.has(name))];
}

/** Gemma's norms compute x * (1 + w): its checkpoints store w one lower. */
function gemmaNames(_spec: DecoderSpec, weights: Weights): Named {
  return [...weights].map(([name, tensor]) => [name, name.endsWith("norm.weight") ? { shape: tensor.shape, data: tensor.data.map((v) => v - 1) } : tensor]);
}

/**
 * Falcon's names; query_key_value holds, for each KV head, its query heads, its key and its value (its bias
 * likewise). With `headOnly` the tied matrix is stored as lm_head.weight alone.
 */
function falconNames(headOnly: boolean) {
  return (spec: DecoderSpec, weights: Weights): Named => {
    const { num_heads, num_kv_heads, head_dim } = spec;
    const get = (name: string) => weights.get(name)!;
    const named: Named = [[headOnly ? "lm_head.weight" : "transformer.word_embeddings.weight", get("model.embed_tokens.weight")]];
    const norms = { parallel: ["ln_attn", "ln_mlp"], sequential: ["input_layernorm", "post_attention_layernorm"], parallel_shared_norm: ["input_layernorm", null] }[spec.block!];
    const parts = spec.dense_bias ? ["weight", "bias"] : ["weight"];
    for (let i = 0; i < spec.num_layers; i++) {
      const ours = `model.layers.${i}`;
      const theirs = `transformer.h.${i}`;
      for (const part of ["weight", "bias"]) {
        named.push([`${theirs}.${norms[0]}.${part}`, get(`${ours}.input_layernorm.${part}`)]);
        if (norms[1]) named.push([`${theirs}.${norms[1]}.${part}`, get(`${ours}.post_attention_layernorm.${part}`)]);
      }
      const perGroup = num_heads / num_kv_heads;
      for (const part of parts) {
        const groups: WeightTensor[] = [];
        const matrix = (name: string) => {
          const tensor = get(`${ours}.self_attn.${name}_proj.${part}`);
          return tensor.shape.length === 2 ? tensor : { shape: [tensor.shape[0], 1], data: tensor.data };
        };
        for (let g = 0; g < num_kv_heads; g++) {
          groups.push(slice(matrix("q"), g * perGroup * head_dim, perGroup * head_dim));
          groups.push(slice(matrix("k"), g * head_dim, head_dim));
          groups.push(slice(matrix("v"), g * head_dim, head_dim));
        }
        const fused = rows(groups);
        named.push([`${theirs}.self_attention.query_key_value.${part}`, part === "bias" ? { shape: [fused.shape[0]], data: fused.data } : fused]);
        named.push([`${theirs}.self_attention.dense.${part}`, get(`${ours}.self_attn.o_proj.${part}`)]);
        named.push([`${theirs}.mlp.dense_h_to_4h.${part}`, get(`${ours}.mlp.up_proj.${part}`)]);
        named.push([`${theirs}.mlp.dense_4h_to_h.${part}`, get(`${ours}.mlp.down_proj.${part}`)]);
      }
    }
    named.push(["transformer.ln_f.weight", get("model.norm.weight")], ["transformer.ln_f.bias", get("model.norm.bias")]);
    return named;
  };
}

const mistral: DecoderSpec = { ...base, sliding_window: { size: SLIDING_WINDOW, layers: [0, 1] } };
const qwen2: DecoderSpec = { ...base, qkv_bias: true, tie_word_embeddings: true };
const gemma: DecoderSpec = {
  ...base,
  num_kv_heads: 1,
  head_dim: 16,
  mlp: "geglu",
  embedding_multiplier: Math.sqrt(32),
  tie_word_embeddings: true,
  positions: { kind: "rope", rope: { layout: "rotate_half", head_dim: 16, rotary_dim: 16, theta: 10000 } },
};
const longrope = { short_factor: [1, 1.25, 1.5], long_factor: [2, 4, 8] };
const phi3: DecoderSpec = {
  ...base,
  sliding_window: { size: SLIDING_WINDOW, layers: [0, 1] },
  positions: {
    kind: "rope",
    rope: {
      layout: "rotate_half",
      head_dim: 8,
      rotary_dim: 6,
      theta: 10000,
      // The caches here stay inside the 32 original positions, where transformers uses the short factors.
      scaling: { rope_type: "longrope", ...longrope, original_max_position_embeddings: 32, factor: 4, use_long_factor: false },
    },
  },
};
const falcon7b: DecoderSpec = {
  ...base,
  num_kv_heads: 1,
  intermediate_size: 128,
  norm: "layer",
  norm_eps: 1e-5,
  mlp: "gelu_exact",
  block: "parallel_shared_norm",
  tie_word_embeddings: true,
};
const falcon40b: DecoderSpec = { ...falcon7b, num_kv_heads: 2, block: "parallel" };
const falconRw: DecoderSpec = {
  ...falcon7b,
  num_kv_heads: 4,
  block: "sequential",
  qkv_bias: true,
  dense_bias: true,
  positions: { kind: "alibi", positions: "mask_cumsum", scaled_by_head_dim: true },
};

function falconConfig(spec: DecoderSpec, architecture: Record<string, unknown>): Record<string, unknown> {
  return {
    model_type: "falcon",
    architectures: ["FalconForCausalLM"],
    vocab_size: spec.vocab_size,
    hidden_size: spec.hidden_size,
    num_attention_heads: spec.num_heads,
    num_hidden_layers: spec.num_layers,
    layer_norm_epsilon: spec.norm_eps,
    alibi: false,
    bias: false,
    parallel_attn: true,
    bos_token_id: 1,
    eos_token_id: 2,
    ...architecture,
  };
}

const FIXTURES: HfFixture[] = [
  { name: "llama", spec: base, config: llamaConfig("llama", "LlamaForCausalLM", base), checkpoint: sameNames },
  {
    name: "mistral: the graph applies sliding_window",
    spec: mistral,
    config: { ...llamaConfig("mistral", "MistralForCausalLM", mistral), sliding_window: SLIDING_WINDOW },
    checkpoint: sameNames,
  },
  {
    name: "qwen2: q/k/v biases, tied embeddings",
    spec: qwen2,
    config: { ...llamaConfig("qwen2", "Qwen2ForCausalLM", qwen2), use_sliding_window: false, sliding_window: 32768, max_window_layers: 2 },
    checkpoint: sameNames,
  },
  {
    name: "gemma: sqrt(hidden) embeddings, 1 + w norms, gelu_pytorch_tanh, head_dim 16",
    spec: gemma,
    config: { ...llamaConfig("gemma", "GemmaForCausalLM", gemma), head_dim: 16, hidden_act: "gelu", hidden_activation: "gelu_pytorch_tanh" },
    checkpoint: gemmaNames,
  },
  {
    name: "phi3: fused qkv_proj and gate_up_proj, longrope, partial rotary, sliding_window",
    spec: phi3,
    config: {
      ...llamaConfig("phi3", "Phi3ForCausalLM", phi3),
      partial_rotary_factor: 0.75,
      original_max_position_embeddings: 32,
      rope_scaling: { type: "longrope", ...longrope },
      sliding_window: SLIDING_WINDOW,
    },
    checkpoint: phi3Names,
  },
  {
    name: "falcon (7B): multi-query, one layer norm for parallel attention and MLP",
    spec: falcon7b,
    config: falconConfig(falcon7b, { multi_query: true, new_decoder_architecture: false }),
    checkpoint: falconNames(false),
  },
  {
    name: "falcon (40B): new_decoder_architecture, grouped KV heads, ln_attn and ln_mlp, head stored as lm_head",
    spec: falcon40b,
    config: falconConfig(falcon40b, { new_decoder_architecture: true, num_kv_heads: 2, ffn_hidden_size: 128 }),
    checkpoint: falconNames(true),
  },
  {
    name: "falcon (RW): alibi, biases on every projection, sequential block, one KV head per query head",
    spec: falconRw,
    config: falconConfig(falconRw, { multi_query: false, new_decoder_architecture: false, parallel_attn: false, alibi: true, bias: true }),
    checkpoint: falconNames(false),
  },
];

async function writeCheckpoint(fixture: HfFixture, dir: string, weights: Weights): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, "config.json"), JSON.stringify(fixture.config, null, 2));
  await writeTinyTokenizer(dir);
  await writeFile(join(dir, "model.safetensors"), safetensorsFile(fixture.checkpoint(fixture.spec, weights), "F32"));
}

/** Logits of every position under plain transformers.js, from an empty cache under the graph's own names. */
async function plainLogits(dir: string, spec: DecoderSpec, tokens: readonly number[]): Promise<Tensor> {
  const model = await transformers.AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true });
  const empty: Record<string, Tensor> = {};
  for (let i = 0; i < spec.num_layers; i++) {
    for (const part of ["key", "value"]) empty[`past_key_values.${i}.${part}`] = new Tensor("float32", new Float32Array(0), [1, spec.num_kv_heads, 0, spec.head_dim]);
  }
  const input_ids = new Tensor("int64", BigInt64Array.from(tokens, BigInt), [1, tokens.length]);
  const attention_mask = new Tensor("int64", new BigInt64Array(tokens.length).fill(1n), [1, tokens.length]);
  const { logits } = (await model({ input_ids, attention_mask, past_key_values: new DynamicCache(empty) })) as { logits: Tensor };
  await model.dispose();
  return logits;
}

describe("Hugging Face checkpoints of every converted family", () => {
  FIXTURES.forEach((fixture, index) => {
    it(`${fixture.name}: converts to the oracle's logits, and perplexity and generate run on it`, async () => {
      const weights = randomDecoderWeights(fixture.spec, 5 + index);
      const source = join(root, `source-${index}`);
      const converted = join(root, `converted-${index}`);
      await writeCheckpoint(fixture, source, weights);
      await convertCheckpoint(source, converted);
      assert.deepEqual(JSON.parse(await readFile(join(converted, "config.json"), "utf8")), fixture.config, "config.json is carried over");

      const tokens = Array.from({ length: 16 }, (_, i) => 1 + ((i * 37 + 11) % 63));
      const logits = await plainLogits(converted, fixture.spec, tokens);
      const expected = new StreamingReference(fixture.spec, weights, { sink_size: 0, window_size: null }).forward(tokens);
      assert.equal(expected.length, tokens.length);
      expected.forEach((row, t) => {
        const diff = maxAbsDiff(logitsAt(logits, 0, t), row);
        assert.ok(diff < TOLERANCE, `token ${t} differs from the oracle by ${diff}`);
      });

      const data = join(root, `text-${index}.txt`);
      await writeFile(data, TEXT);
      const ids = (await transformers.AutoTokenizer.from_pretrained(converted, { local_files_only: true })).encode(TEXT);
      const model = ["--model_name_or_path", converted];
      const experiments: [Experiment, ReferencePolicy][] = [["attention_sinks", { sink_size: SINKS, window_size: WINDOW - SINKS }]];
      // Falcon's multi-query config makes transformers.js name a cache the graph does not have; the dense
      // experiment must feed the graph's own.
      if (fixture.spec.num_kv_heads === 1 && fixture.config.model_type === "falcon") experiments.push(["transformers", { sink_size: 0, window_size: null }]);
      const out = join(root, `benchmark-${index}`);
      const [generated, ...benchmarks] = await Promise.all([
        runCli(["generate", ...model, "--prompt", "the cat", "--max_new_tokens", "20", "--min_new_tokens", "20", "--attention_sink_size", "2", "--attention_sink_window_size", "6"]),
        ...experiments.map(([experiment]) =>
          runCli(["perplexity", ...model, "--experiment", experiment, "--dataset_name", data, "--output_dir", out, "--num_tokens", String(TOKENS), "--window_size", String(WINDOW), "--attention_sink_size", String(SINKS)]),
        ),
      ]);
      assert.equal(generated.code, 0, generated.stderr);
      assert.ok(generated.stdout.startsWith("the cat"), generated.stdout);
      assert.match(generated.stderr, new RegExp(`${fixture.config.model_type} model, attention_sinks: 2 sink \\+ 6 window tokens`));
      assert.match(generated.stderr, /^20 tokens in [\d.]+ s .*stopped: max_new_tokens$/m);
      for (const [i, [experiment, policy]] of experiments.entries()) {
        assert.equal(benchmarks[i].code, 0, benchmarks[i].stderr);
        const { nll } = parseBenchmarkCsv(await readFile(join(out, `${experiment}.csv`), "utf8"), `${experiment}.csv`);
        assert.equal(nll.length, TOKENS);
        const oracle = new StreamingReference(fixture.spec, weights, policy);
        nll.forEach((value, t) => {
          const reference = referenceNll(oracle.forward([ids[t]])[0], ids[t + 1]);
          assert.ok(Math.abs(value - reference) < TOLERANCE, `${experiment}, token ${t}: NLL ${value} vs the oracle's ${reference}`);
        });
      }
    });
  });

  it("a fused matrix of the wrong size, or of a layer the config does not have, is refused naming it", async () => {
    const phi3Fixture = FIXTURES.find((fixture) => fixture.config.model_type === "phi3")!;
    const weights = randomDecoderWeights(phi3, 1);
    const qkv = "model.layers.1.self_attn.qkv_proj.weight";
    const cases: [(named: Named) => Named, RegExp][] = [
      [(named) => named.map(([name, tensor]) => [name, name === qkv ? slice(tensor, 0, tensor.shape[0] - 8) : tensor]), /the weight model\.layers\.1\.self_attn\.qkv_proj\.weight has shape \[56, 32\], but the model's configuration needs \[64, 32\]/],
      [(named) => [...named, ["model.layers.2.self_attn.qkv_proj.weight", named.find(([name]) => name === qkv)![1]]], /the weight model\.layers\.2\.self_attn\.qkv_proj\.weight does not belong to the configured model/],
    ];
    for (const [index, [change, message]] of cases.entries()) {
      const dir = join(root, `bad-fused-${index}`);
      await writeCheckpoint({ ...phi3Fixture, checkpoint: (spec, w) => change(phi3Names(spec, w)) }, dir, weights);
      await assert.rejects(convertCheckpoint(dir, join(root, `never-fused-${index}`)), (error: Error) => error instanceof ConversionError && message.test(error.message));
    }
  });

  it("refuses what the graph cannot compute, naming the key", async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ ...llamaConfig("qwen2", "Qwen2ForCausalLM", qwen2), hidden_act: "gelu" }, /config\.json: hidden_act "gelu" is not supported for qwen2 \(only silu\)/],
      [{ ...falconConfig(falcon7b, { multi_query: true }), activation: "relu" }, /config\.json: activation "relu" is not supported for falcon \(only gelu\)/],
      [{ ...llamaConfig("llama", "LlamaForCausalLM", base), attention_bias: true }, /config\.json: attention_bias is true: biased attention projections are not supported/],
      [{ ...llamaConfig("llama", "LlamaForCausalLM", base), rope_scaling: { rope_type: "magic" } }, /config\.json: rope_scaling\.rope_type "magic" is not supported/],
      [{ ...llamaConfig("gpt2", "GPT2LMHeadModel", base) }, /config\.json: model_type "gpt2" is not supported \(supported: llama, mistral, qwen2, gemma, phi3, falcon\)/],
    ];
    for (const [index, [config, message]] of cases.entries()) {
      const dir = join(root, `refused-${index}`);
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, "config.json"), JSON.stringify(config));
      await assert.rejects(convertCheckpoint(dir, join(root, `never-${index}`)), (error: Error) => error instanceof ConversionError && message.test(error.message), JSON.stringify(config));
    }
  });
});

/**
 * Graphs that return float16 logits for every position and take no `num_logits_to_keep` (as fp16 exports by
 * onnxruntime-genai's model builder do): the logits the cache keeps are gathered in float16, not read as
 * float32 numbers, so generation picks the same tokens as plain transformers.js.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as transformers from "@huggingface/transformers";
import { DynamicCache, Tensor } from "@huggingface/transformers";
import { AutoModelForCausalLM } from "../src/index.js";
import { GenerationSession } from "../src/generation/session.js";
import { SinkStream } from "../src/transformers/backend.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";
import { ids, tokenStream } from "./support/streaming.js";

const root = await mkdtemp(join(tmpdir(), "attention-sinks-fp16-logits-"));
after(() => rm(root, { recursive: true, force: true }));

const dir = join(root, "model");
const model = await writeTinyTextModel(dir, "llama", { seed: 5, kv_dtype: "fp16", logits_dtype: "fp16" });
const sinks = { local_files_only: true, attention_sink_size: 4, attention_sink_window_size: 56 } as const;

describe("float16 logits without num_logits_to_keep", () => {
  it("the graph is of that style", async () => {
    const plain = await transformers.AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true });
    const session = plain.sessions.model as unknown as { inputNames: string[]; outputMetadata: { name: string; type: string }[] };
    assert.ok(!session.inputNames.includes("num_logits_to_keep"));
    const out = (await plain({ input_ids: ids([1, 2, 3]), attention_mask: ids([1, 1, 1]) })) as { logits: Tensor };
    assert.equal(out.logits.type, "float16");
    assert.deepEqual(out.logits.dims, [1, 3, model.spec.vocab_size]);
  });

  it("forward keeps the last positions' logits in float16, equal to the full pass's", async () => {
    const streaming = await AutoModelForCausalLM.from_pretrained(dir, sinks);
    const tokens = tokenStream(9, model.spec.vocab_size, 4);
    const full = await streaming.forward({ input_ids: ids(tokens), past_key_values: new DynamicCache() });
    const last = await streaming.forward({ input_ids: ids(tokens), past_key_values: new DynamicCache(), num_logits_to_keep: 2 });
    assert.equal(full.logits.type, "float16");
    assert.equal(last.logits.type, "float16");
    const vocab = model.spec.vocab_size;
    assert.deepEqual(last.logits.dims, [1, 2, vocab]);
    const expected = (full.logits.data as Uint16Array).subarray(7 * vocab);
    assert.equal(expected.length, 2 * vocab);
    assert.deepEqual(Array.from(last.logits.data as Uint16Array), Array.from(expected));
  });

  it("greedy generate() and a generation session pick plain transformers.js's tokens while nothing is evicted", async () => {
    const prompt = tokenStream(6, model.spec.vocab_size, 9);
    const generate = async (m: transformers.PreTrainedModel) =>
      Array.from(((await m.generate({ input_ids: ids(prompt), max_new_tokens: 24, min_new_tokens: 24, do_sample: false })) as Tensor).data as BigInt64Array, Number).slice(prompt.length);
    const plain = await transformers.AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true });
    const streaming = await AutoModelForCausalLM.from_pretrained(dir, sinks);
    const expected = await generate(plain);
    assert.equal(expected.length, 24);
    assert.ok(new Set(expected).size > 3, `the fixture generates varied tokens: ${expected}`);
    assert.deepEqual(await generate(streaming), expected);

    const tokenizer = await transformers.AutoTokenizer.from_pretrained(dir, { local_files_only: true });
    const session = new GenerationSession(new SinkStream(await AutoModelForCausalLM.from_pretrained(dir, sinks), tokenizer));
    const chosen: number[] = [];
    const backend = session.backend;
    const feed = backend.feed.bind(backend);
    // Records what the session feeds after the prompt: the tokens it chose.
    backend.feed = async (tokens) => {
      if (tokens.length === 1 && chosen.length < 24) chosen.push(tokens[0]);
      return feed(tokens);
    };
    const result = await session.generate(prompt, { max_new_tokens: 25, min_new_tokens: 25 });
    assert.equal(result.new_tokens, 25);
    assert.deepEqual(chosen, expected);
  });
});

/** Batches, cache bounds, and every error a user can run into. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { once } from "node:events";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DynamicCache } from "@huggingface/transformers";
import {
  AttentionSinkOptionError,
  AutoModelForCausalLM,
  AutoTokenizer,
  LlamaForCausalLM,
  ConversionError,
  ModelNotFoundError,
  SinkCacheError,
  UnsupportedModelError,
  pipeline,
  sinkCacheStats,
} from "../src/index.js";
import * as transformers from "@huggingface/transformers";
import { StreamingReference } from "./support/reference/streaming_reference.js";
import { StreamingDecoder } from "../src/transformers/streaming_forward.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";
import { fixture, ids, logitsAt, maxAbsDiff, tokenStream } from "./support/streaming.js";

describe("batches", () => {
  it("rows of equal length stream independently, each equal to the oracle", async () => {
    const f = await fixture("llama");
    const model = await AutoModelForCausalLM.from_pretrained(f.dir, { local_files_only: true, attention_sink_size: 2, attention_sink_window_size: 6 });
    const rows = [tokenStream(30, f.spec.vocab_size, 1), tokenStream(30, f.spec.vocab_size, 2)];
    const refs = rows.map(() => new StreamingReference(f.spec, f.weights, { sink_size: 2, window_size: 6 }));
    const cache = new DynamicCache();
    for (let t = 0; t < 30; t++) {
      const out = await model.forward({ input_ids: ids([rows[0][t], rows[1][t]], 2), past_key_values: cache });
      for (let b = 0; b < 2; b++) {
        const expected = refs[b].forward([rows[b][t]])[0];
        assert.ok(maxAbsDiff(logitsAt(out.logits, b, 0), expected) < 1e-4, `row ${b} token ${t}`);
      }
    }
    await assert.rejects(
      model.forward({ input_ids: ids([1]), past_key_values: cache }),
      (e: Error) => e instanceof SinkCacheError && /streams 2 row\(s\); got a batch of 1/.test(e.message),
    );
  });

  it("padded batches are refused with a clear error", async () => {
    const f = await fixture("llama");
    const model = await AutoModelForCausalLM.from_pretrained(f.dir, { local_files_only: true });
    await assert.rejects(
      model.generate({ input_ids: ids([0, 5, 6, 7, 8, 9], 2), attention_mask: ids([0, 1, 1, 1, 1, 1], 2), max_new_tokens: 2 }),
      (e: Error) => e instanceof SinkCacheError && /padded batches are not supported/.test(e.message),
    );
  });
});

describe("cache bounds", () => {
  it("the attended tokens never exceed sink + window, KV bytes are constant once full, buffers stay bounded", async () => {
    const f = await fixture("gpt_neox");
    const model = await AutoModelForCausalLM.from_pretrained(f.dir, {
      local_files_only: true, attention_sink_size: 4, attention_sink_window_size: 20, attention_sink_compaction_interval: 6,
    });
    const { capacity, compaction_interval } = model.attention_sinks;
    assert.equal(compaction_interval, 6);
    const cache = new DynamicCache();
    const perToken = 2 * f.spec.num_layers * f.spec.num_kv_heads * f.spec.head_dim * 4;
    const kvBytes = new Set<number>();
    for (const t of tokenStream(200, f.spec.vocab_size, 9)) {
      await model.forward({ input_ids: ids([t]), past_key_values: cache });
      const stats = sinkCacheStats(cache)!;
      assert.ok(stats.cached_tokens <= capacity);
      assert.ok(stats.kv_buffer_bytes <= (capacity + compaction_interval) * perToken);
      if (stats.seen_tokens >= capacity) kvBytes.add(stats.kv_cache_bytes);
    }
    assert.deepEqual([...kvBytes], [capacity * perToken]);
    assert.equal(sinkCacheStats(cache)!.seen_tokens, 200);
  });

  it("a DynamicCache filled without attention sinks is refused", async () => {
    const f = await fixture("llama");
    const plain = await transformers.AutoModelForCausalLM.from_pretrained(f.dir, { local_files_only: true });
    const result = (await plain.generate({ input_ids: ids([3, 4, 5]), max_new_tokens: 2, return_dict_in_generate: true })) as { past_key_values: DynamicCache };
    const model = await AutoModelForCausalLM.from_pretrained(f.dir, { local_files_only: true });
    await assert.rejects(
      model.forward({ input_ids: ids([6]), past_key_values: result.past_key_values }),
      /already holds tokens from a model without attention sinks/,
    );
  });
});

describe("when lazy eviction is exact", () => {
  // Two layers, as the configs below say.
  const past = ["past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"];
  const session = (names: string[]) => ({ inputNames: ["input_ids", "attention_mask", ...names, ...past], outputNames: ["logits"], run: async () => ({}) });
  const options = { attention_sink_size: 4, attention_sink_window_size: 60, attention_sink_compaction_interval: 16 };
  const llama = { model_type: "llama", num_hidden_layers: 2, num_attention_heads: 4, hidden_size: 32, max_position_embeddings: 512 };

  it("RoPE graphs that take position_ids keep masked slots; graphs that derive positions compact on every eviction", () => {
    assert.equal(new StreamingDecoder(session(["position_ids"]), llama, options).settings.compaction_interval, 16);
    assert.equal(new StreamingDecoder(session([]), llama, options).settings.compaction_interval, 0);
  });

  it("ALiBi over attended slots keeps masked slots; ALiBi over slot indices cannot", () => {
    const bloom = { model_type: "bloom", n_layer: 2, n_head: 4, hidden_size: 32 };
    const mpt = { model_type: "mpt", n_layers: 2, n_heads: 4, d_model: 32, max_seq_len: 512 };
    assert.equal(new StreamingDecoder(session([]), bloom, options).settings.compaction_interval, 16);
    assert.equal(new StreamingDecoder(session([]), mpt, options).settings.compaction_interval, 0);
  });

  it("the default window reserves room for masked slots only where they may stay", () => {
    const defaults = { attention_sink_size: 4 };
    assert.equal(new StreamingDecoder(session(["position_ids"]), llama, defaults).settings.window_size, 476);
    // A graph that derives positions compacts on every eviction, so the whole context is window.
    assert.equal(new StreamingDecoder(session([]), llama, defaults).settings.window_size, 508);
  });

  it("the interval never lets slot positions reach max_position_embeddings", () => {
    const tight = { ...llama, max_position_embeddings: 70 };
    assert.equal(new StreamingDecoder(session(["position_ids"]), tight, options).settings.compaction_interval, 6);
  });
});

describe("errors", () => {
  it("names the wrong option", async () => {
    const f = await fixture("llama", 64);
    const cases: [object, RegExp][] = [
      [{ attention_sink_size: -1 }, /attention_sink_size must be at least 0/],
      [{ attention_sink_window_size: 2.5 }, /attention_sink_window_size must be an integer/],
      [{ attention_sink_size: 4, attention_sink_window_size: 61 }, /4 \+ 61 = 65 exceeds the 64 positions/],
    ];
    for (const [options, message] of cases) {
      await assert.rejects(
        AutoModelForCausalLM.from_pretrained(f.dir, { local_files_only: true, ...options }),
        (e: Error) => e instanceof AttentionSinkOptionError && message.test(e.message),
      );
    }
  });

  it("a model that is not on disk is reported as not found locally, and as unreachable on the Hub", async () => {
    const { remoteHost, allowRemoteModels } = transformers.env;
    // A loopback port nobody listens on stands in for an unreachable Hub.
    const server = createServer().listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    server.close();
    Object.assign(transformers.env, { remoteHost: `http://127.0.0.1:${port}/`, allowRemoteModels: true });
    try {
      const cases: [string, RegExp][] = [
        ["./no/such/model", /^\.\/no\/such\/model: not found locally \(no file or folder of that name\)$/],
        ["foo/bar/baz", /^foo\/bar\/baz: not found locally, and not a Hugging Face Hub model id either/],
        ["models/tiny", /^models\/tiny: not found locally, and the Hugging Face Hub, where it would be a model id, cannot be reached \(.*ECONNREFUSED.*\); .*\(\.\/models\/tiny for a relative path\)$/],
      ];
      for (const [id, message] of cases) {
        for (const load of [() => AutoModelForCausalLM.from_pretrained(id), () => AutoTokenizer.from_pretrained(id), () => pipeline("text-generation", id)]) {
          await assert.rejects(load(), (e: Error) => e instanceof ModelNotFoundError && message.test(e.message));
        }
      }
      Object.assign(transformers.env, { allowRemoteModels: false });
      await assert.rejects(AutoModelForCausalLM.from_pretrained("owner/name"), /^ModelNotFoundError: owner\/name: not found locally, and the Hugging Face Hub is off/);
    } finally {
      Object.assign(transformers.env, { remoteHost, allowRemoteModels });
    }
  });

  it("position_ids and empty inputs are refused", async () => {
    const f = await fixture("llama");
    const model = await AutoModelForCausalLM.from_pretrained(f.dir, { local_files_only: true });
    await assert.rejects(model.forward({ input_ids: ids([1, 2]), position_ids: ids([0, 1]) }), /the cache assigns positions/);
    await assert.rejects(model.forward({ input_ids: ids([]) }), /input_ids is empty/);
  });

  it("an unsupported model_type lists the supported ones", async (t) => {
    const f = await fixture("gpt2");
    const dir = await mkdtemp(join(tmpdir(), "attention-sinks-jais-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await cp(f.dir, dir, { recursive: true });
    const config = JSON.parse(await readFile(join(dir, "config.json"), "utf8"));
    await writeFile(join(dir, "config.json"), JSON.stringify({ ...config, model_type: "jais", architectures: ["JAISLMHeadModel"] }));
    await assert.rejects(
      AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true }),
      (e: Error) => e instanceof UnsupportedModelError && /"jais" is not supported/.test(e.message) && /gpt2, gpt_neo, gpt_neox, gptj/.test(e.message),
    );
  });

  it("a supported family with a RoPE scaling key the package does not understand is refused, naming the key", async (t) => {
    const f = await fixture("llama");
    const dir = await mkdtemp(join(tmpdir(), "attention-sinks-mrope-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await cp(f.dir, dir, { recursive: true });
    const config = JSON.parse(await readFile(join(dir, "config.json"), "utf8"));
    for (const [rope_scaling, message] of [
      [{ rope_type: "magic", factor: 2 }, /config\.json: rope_scaling\.rope_type "magic" is not supported \(supported: linear, dynamic, llama3, yarn, longrope\)/],
      [{ rope_type: "linear", factor: 2, mrope_section: [2, 2] }, /config\.json: rope_scaling\.mrope_section is not understood by attention-sinks for rope type "linear"/],
    ] as const) {
      await writeFile(join(dir, "config.json"), JSON.stringify({ ...config, rope_scaling }));
      // Checked with the model folder's files, before transformers.js reads them: the message names the file.
      await assert.rejects(AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true }), (e: Error) => e instanceof ConversionError && message.test(e.message));
    }
  });
});

describe("drop-in entry points", () => {
  it("per-family classes and pipeline() stream with the sink options", async () => {
    const f = await fixture("llama");
    const model = await LlamaForCausalLM.from_pretrained(f.dir, { local_files_only: true, attention_sink_size: 1, attention_sink_window_size: 7 });
    assert.ok(model instanceof LlamaForCausalLM);
    assert.ok(model instanceof transformers.LlamaForCausalLM);
    assert.equal(model.attention_sinks.capacity, 8);
    const pipe = await pipeline("text-generation", f.dir, { local_files_only: true, attention_sink_size: 2, attention_sink_window_size: 5 });
    const streaming = (pipe as unknown as { model: { attention_sinks: { sink_size: number; window_size: number } } }).model;
    assert.deepEqual([streaming.attention_sinks.sink_size, streaming.attention_sinks.window_size], [2, 5]);
  });

  it("pipeline() text generation goes through the sink cache past its size", async (t) => {
    const dir = await mkdtemp(join(tmpdir(), "attention-sinks-pipeline-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await writeTinyTextModel(dir, "llama", { seed: 3 });
    const options = { local_files_only: true, attention_sink_size: 2, attention_sink_window_size: 6 };
    const pipe = (await pipeline("text-generation", dir, options)) as unknown as (
      text: string,
      options: object,
    ) => Promise<{ generated_text: string }[]>;
    const [{ generated_text }] = await pipe("once upon a time", { max_new_tokens: 30, do_sample: false });
    // the same greedy stream through the model directly, and through the oracle's cache size
    const model = await AutoModelForCausalLM.from_pretrained(dir, options);
    const tokenizer = await AutoTokenizer.from_pretrained(dir);
    const inputs = tokenizer("once upon a time");
    const sequences = (await model.generate({ ...inputs, max_new_tokens: 30, do_sample: false })) as transformers.Tensor;
    assert.equal(generated_text, tokenizer.decode(Array.from(sequences.data as BigInt64Array, Number), { skip_special_tokens: true }));
    const plain = await transformers.pipeline("text-generation", dir, { local_files_only: true });
    const [{ generated_text: unbounded }] = await (plain as unknown as typeof pipe)("once upon a time", { max_new_tokens: 30, do_sample: false });
    assert.notEqual(generated_text, unbounded, "a cache of 8 tokens must change a 30-token continuation");
  });

  it("pipeline() runs prompts of unequal length one at a time, and chats without a template in the plain format", async (t) => {
    const dir = await mkdtemp(join(tmpdir(), "attention-sinks-pipeline-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await writeTinyTextModel(dir, "llama", { seed: 5 });
    const options = { local_files_only: true, attention_sink_size: 2, attention_sink_window_size: 6 };
    type Output = { generated_text: string | { role: string; content: string }[] }[];
    const pipe = (await pipeline("text-generation", dir, options)) as unknown as (input: unknown, options: object) => Promise<Output | Output[]>;
    const generation = { max_new_tokens: 12, do_sample: false };
    const prompts = ["once upon a time there was", "a"];
    const batched = (await pipe(prompts, generation)) as Output[];
    assert.equal(batched.length, 2);
    for (const [index, prompt] of prompts.entries()) assert.deepEqual(batched[index], await pipe(prompt, generation));

    const tokenizer = await AutoTokenizer.from_pretrained(dir);
    assert.equal(tokenizer.chat_template, null);
    const messages = [
      { role: "user", content: "once upon a time" },
      { role: "assistant", content: "there was" },
      { role: "user", content: "a" },
    ];
    const [reply] = (await pipe(messages, generation)) as Output;
    const conversation = reply.generated_text as { role: string; content: string }[];
    assert.deepEqual(conversation.slice(0, 3), messages);
    // What the model writes after the plain transcript, through the model directly.
    const model = await AutoModelForCausalLM.from_pretrained(dir, options);
    const inputs = tokenizer("User: once upon a time\nAssistant: there was\nUser: a\nAssistant:");
    const sequences = (await model.generate({ ...inputs, ...generation })) as transformers.Tensor;
    const ids = Array.from(sequences.data as BigInt64Array, Number).slice(inputs.input_ids.dims[1]);
    assert.deepEqual(conversation[3], { role: "assistant", content: tokenizer.decode(ids, { skip_special_tokens: true }).trim() });
  });

  it("defaults to 4 sinks and a 1020 window where the model addresses that many positions", async () => {
    const f = await fixture("llama", 2048);
    const model = await AutoModelForCausalLM.from_pretrained(f.dir, { local_files_only: true });
    assert.equal(model.attention_sinks.sink_size, 4);
    assert.equal(model.attention_sinks.window_size, 1020);
    assert.equal(model.attention_sinks.positions, "rope");
  });
});

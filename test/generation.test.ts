/**
 * The generation library behind `generate` and `chat`: bounded detokenization, the bounded logits
 * processors, the session (identical to plain transformers.js while nothing is evicted), chat turns and
 * prompt files.
 */
import { before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as transformers from "@huggingface/transformers";
import { RepetitionPenaltyLogitsProcessor, Tensor, type PreTrainedModel, type PreTrainedTokenizer } from "@huggingface/transformers";
import { resolveModelSource } from "../src/convert/index.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";
import { Chat, parsePrompts, PromptFileError } from "../src/generation/chat.js";
import { TopKTopPFilter, WindowedRepetitionPenalty } from "../src/generation/logits_processors.js";
import { GenerationSession, type TurnResult } from "../src/generation/session.js";
import { IncrementalTextDecoder } from "../src/generation/text_decoder.js";
import type { StreamingBackend } from "../src/backend/backend.js";
import { DenseStream, SinkStream, TransformersTokenizer } from "../src/transformers/backend.js";
import { enableAttentionSinks, type AttentionSinkModel } from "../src/transformers/enable.js";
import { sharedFiles } from "./support/shared_data.js";

transformers.env.allowRemoteModels = false;

let dir = "";
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "attention-sinks-generation-"));
  await writeTinyTextModel(dir, "llama", { seed: 7, chat_template: true });
});

async function loadTokenizer(path = dir): Promise<PreTrainedTokenizer> {
  return transformers.AutoTokenizer.from_pretrained(path, { local_files_only: true });
}

async function loadModel(sinks: { sink: number; window: number } | null): Promise<PreTrainedModel> {
  const model = await transformers.AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true });
  return sinks ? enableAttentionSinks(model, { attention_sink_size: sinks.sink, attention_sink_window_size: sinks.window }) : model;
}

/** The model as a stream for a generation session: through the sink cache, or plain transformers.js. */
async function loadBackend(sinks: { sink: number; window: number } | null, tokenizer: PreTrainedTokenizer): Promise<StreamingBackend> {
  const model = await loadModel(sinks);
  return sinks ? new SinkStream(model as PreTrainedModel & AttentionSinkModel, tokenizer) : new DenseStream(model, tokenizer, 64);
}

function streamDecode(tokenizer: PreTrainedTokenizer, context: bigint[], ids: readonly number[]): string {
  const decoder = new IncrementalTextDecoder(tokenizer);
  decoder.setContext(context);
  return ids.map((id) => decoder.push(BigInt(id))).join("") + decoder.flush();
}

describe("IncrementalTextDecoder", () => {
  it("streams exactly the text of a one-shot decode (fixture tokenizer)", async () => {
    const tokenizer = await loadTokenizer();
    const ids = tokenizer.encode("once upon a time, she was happy!\nthe end. and then?");
    assert.equal(streamDecode(tokenizer, [], ids), tokenizer.decode(ids, { skip_special_tokens: true }));
    // After a context, only the new tokens' text comes out, leading space included.
    const [context, rest] = [ids.slice(0, 5).map(BigInt), ids.slice(5)];
    assert.equal(streamDecode(tokenizer, context, rest), tokenizer.decode(ids, { skip_special_tokens: true }).slice(tokenizer.decode(ids.slice(0, 5), { skip_special_tokens: true }).length));
  });

  it("holds byte-fallback pieces until a character is complete (stories260K tokenizer)", async (t) => {
    const [checkpoint] = sharedFiles(t, "models/stories260K/stories260K.bin", "models/stories260K/tok512.bin") ?? [];
    if (!checkpoint) return;
    const converted = await resolveModelSource(checkpoint, { cacheDir: await mkdtemp(join(tmpdir(), "attention-sinks-converted-")) });
    const tokenizer = await loadTokenizer(converted);
    const ids = tokenizer.encode("Once upon a time, Zoë saw a 🐉 — “wow”, she said.\nThe end.");
    assert.ok(ids.some((id) => tokenizer.decode([id]).includes("\uFFFD")), "the text needs byte-fallback tokens");
    const expected = tokenizer.decode(ids, { skip_special_tokens: true });
    assert.equal(streamDecode(tokenizer, [], ids), expected);
    assert.ok(!expected.includes("\uFFFD"));
  });
});

describe("logits processors", () => {
  const vocab = 12;
  const randomLogits = (batch: number, seed: number) => {
    let state = seed;
    const data = Float32Array.from({ length: batch * vocab }, () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 8 - 4);
    return new Tensor("float32", data, [batch, vocab]);
  };

  it("the windowed repetition penalty equals transformers.js's while the ids fit the window", () => {
    const ids = [[1n, 5n, 5n, 7n], [2n, 3n, 11n, 0n]];
    const ours = new WindowedRepetitionPenalty(1.7, 16)(ids, randomLogits(2, 3));
    const theirs = new RepetitionPenaltyLogitsProcessor(1.7)(ids, randomLogits(2, 3));
    assert.deepEqual(ours.data, theirs.data);
  });

  it("penalises only the last `window` ids, fed step by step as generate() does", () => {
    const penalty = new WindowedRepetitionPenalty(2, 3);
    const ids: bigint[][] = [[4n, 9n]];
    for (const next of [1n, 9n, 3n, 6n, 6n, 2n]) {
      ids[0].push(next);
      const ours = penalty(ids, randomLogits(1, ids[0].length));
      const expected = new RepetitionPenaltyLogitsProcessor(2)([ids[0].slice(-3)], randomLogits(1, ids[0].length));
      assert.deepEqual(ours.data, expected.data, `after ${ids[0].length} ids`);
    }
  });

  it("top-k then top-p keeps the most likely tokens and masks the rest", () => {
    const probabilities = [0.05, 0.4, 0.1, 0.3, 0.15];
    const logits = () => new Tensor("float32", Float32Array.from(probabilities, Math.log), [1, 5]);
    const kept = (filter: TopKTopPFilter) => [...(filter([[0n]], logits()).data as Float32Array)].flatMap((value, i) => (value > -Infinity ? [i] : []));
    assert.deepEqual(kept(new TopKTopPFilter(0, 1)), [0, 1, 2, 3, 4]);
    assert.deepEqual(kept(new TopKTopPFilter(0, 0.65)), [1, 3]);
    assert.deepEqual(kept(new TopKTopPFilter(0, 0.71)), [1, 3, 4]);
    assert.deepEqual(kept(new TopKTopPFilter(2, 1)), [1, 3]);
    // top_p over the renormalised top 3 (0.4, 0.3, 0.15 of 0.85): 0.4 / 0.85 > 0.45.
    assert.deepEqual(kept(new TopKTopPFilter(3, 0.45)), [1]);
    assert.deepEqual(kept(new TopKTopPFilter(0, 1e-9)), [1]);
  });
});

describe("GenerationSession", () => {
  const prompt = "once upon a time, the cat";

  async function plainContinuation(options: Record<string, unknown>): Promise<string> {
    const tokenizer = await loadTokenizer();
    const inputs = tokenizer(prompt);
    const model = await loadModel(null);
    const out = (await model.generate({ ...inputs, do_sample: false, ...options })) as Tensor;
    const ids = (out.tolist() as bigint[][])[0];
    const all = tokenizer.decode(ids, { skip_special_tokens: true });
    return all.slice(tokenizer.decode(ids.slice(0, inputs.input_ids.dims[1]), { skip_special_tokens: true }).length);
  }

  async function sessionContinuation(sinks: { sink: number; window: number } | null, options: Partial<Parameters<GenerationSession["generate"]>[1]>) {
    const tokenizer = await loadTokenizer();
    const session = new GenerationSession(await loadBackend(sinks, tokenizer), { repetition_window: 64 });
    let text = "";
    const result = await session.generate(tokenizer.encode(prompt), {
      max_new_tokens: 40,
      ...options,
      onText: (piece) => {
        text += piece;
      },
    });
    return { text, result, session };
  }

  it("greedy text is plain transformers.js's while the cache never evicts, penalty included", async () => {
    for (const repetition_penalty of [1, 1.3]) {
      const expected = await plainContinuation({ max_new_tokens: 40, repetition_penalty });
      for (const sinks of [{ sink: 4, window: 60 }, null]) {
        const { text, result } = await sessionContinuation(sinks, { repetition_penalty });
        assert.ok(expected.trim().length > 0, "plain transformers.js continues the prompt");
        assert.equal(text, expected, `penalty ${repetition_penalty}, ${sinks ? "sinks" : "plain"}`);
        assert.equal(result.new_tokens, 40);
        assert.equal(result.stopped, "max_new_tokens");
      }
    }
  });

  it("stops at a stop string without emitting it, and on interrupt()", async () => {
    const { text: full, result: fullResult } = await sessionContinuation({ sink: 4, window: 28 }, {});
    assert.deepEqual([fullResult.stopped, fullResult.new_tokens], ["max_new_tokens", 40]);
    // Until the 32-token cache evicts, the text is plain transformers.js's greedy continuation.
    const beforeEviction = 32 - (await loadTokenizer()).encode(prompt).length + 1;
    const expectedStart = await plainContinuation({ max_new_tokens: beforeEviction });
    assert.ok(expectedStart.length >= 15, `a continuation long enough to cut: ${JSON.stringify(expectedStart)}`);
    assert.ok(full.startsWith(expectedStart), `${JSON.stringify(full)} starts with ${JSON.stringify(expectedStart)}`);
    const stop = full.slice(12, 15);
    assert.equal(stop.length, 3);
    assert.ok(full.indexOf(stop) > 0, "some text comes before the stop string");
    const { text, result } = await sessionContinuation({ sink: 4, window: 28 }, { stop_strings: ["\u0000never", stop] });
    assert.equal(result.stopped, "stop_string");
    assert.equal(text, full.slice(0, full.indexOf(stop)));
    assert.ok(text.length > 0 && result.new_tokens > 0, "the text before the stop string is emitted");

    const tokenizer = await loadTokenizer();
    const session = new GenerationSession(await loadBackend({ sink: 4, window: 28 }, tokenizer), { repetition_window: 32 });
    const interrupted = await session.generate(tokenizer.encode(prompt), {
      max_new_tokens: 1000,
      onToken: (n) => n === 5 && session.interrupt(),
    });
    assert.deepEqual([interrupted.stopped, interrupted.new_tokens], ["interrupted", 5]);
    // The flag belongs to that turn: the next one runs to its end.
    const next = await session.generate(tokenizer.encode(" and"), { max_new_tokens: 7 });
    assert.deepEqual([next.stopped, next.new_tokens], ["max_new_tokens", 7]);
    assert.equal(session.stats().cached_tokens, 32);
  });

  it("a plain transformers.js model runs one turn per reset()", async () => {
    const { session } = await sessionContinuation(null, { max_new_tokens: 3 });
    const ids = session.tokenizer.encode(" more");
    await assert.rejects(session.generate(ids, { max_new_tokens: 3 }), /only a model with attention sinks/);
    session.reset();
    assert.equal((await session.generate(ids, { max_new_tokens: 3 })).new_tokens, 3);
  });
});

describe("Chat turns", () => {
  /** A chat over a session stand-in that returns `result` for every turn. */
  async function fakeChat(path: string, result: Omit<TurnResult, "prompt_tokens" | "seconds" | "prefill_seconds" | "generation_seconds">, reply: string) {
    const tokenizer = await loadTokenizer(path);
    const session = {
      tokenizer: new TransformersTokenizer(tokenizer),
      reset() {},
      async generate(_ids: Tensor, options: { onText?: (text: string) => void }) {
        options.onText?.(reply);
        return { ...result, prompt_tokens: 1, seconds: 0, prefill_seconds: 0, generation_seconds: 0 };
      },
    };
    return new Chat(session as unknown as GenerationSession);
  }

  it("with a chat template, feeds only what the template adds after the streamed reply", async () => {
    const maxed = await fakeChat(dir, { new_tokens: 3, stopped: "max_new_tokens", stop_string: null, last_token: 9n }, "hi you");
    assert.equal(maxed.format, "chat_template");
    assert.equal(maxed.nextTurnText("hello"), "<s><|user|>hello<|assistant|>");
    await maxed.send("hello", { max_new_tokens: 3 });
    // The reply was cut short: the template's end-of-turn marker is new to the stream.
    assert.equal(maxed.nextTurnText("and you?"), "</s><|user|>and you?<|assistant|>");
    const ended = await fakeChat(dir, { new_tokens: 3, stopped: "eos", stop_string: null, last_token: 2n }, "hi you");
    await ended.send("hello", { max_new_tokens: 3 });
    // The model generated the marker itself, and the stream feeds it before the next turn.
    assert.equal(ended.nextTurnText("and you?"), "<|user|>and you?<|assistant|>");
    ended.reset();
    assert.equal(ended.nextTurnText("hello"), "<s><|user|>hello<|assistant|>");
  });

  it("without one, uses User:/Assistant: lines and does not repeat a marker the reply stopped at", async () => {
    const plainDir = await mkdtemp(join(tmpdir(), "attention-sinks-plain-chat-"));
    await writeTinyTextModel(plainDir, "gpt2", { seed: 3 });
    const stopped = await fakeChat(plainDir, { new_tokens: 3, stopped: "stop_string", stop_string: "\nUser:", last_token: 5n }, " hi");
    assert.equal(stopped.format, "plain");
    assert.equal(stopped.nextTurnText("hello"), "User: hello\nAssistant:");
    await stopped.send("hello", { max_new_tokens: 3 });
    assert.equal(stopped.nextTurnText("more"), " more\nAssistant:");
    const maxed = await fakeChat(plainDir, { new_tokens: 3, stopped: "max_new_tokens", stop_string: null, last_token: 5n }, " hi");
    await maxed.send("hello", { max_new_tokens: 3 });
    assert.equal(maxed.nextTurnText("more"), "\nUser: more\nAssistant:");
    // A caller's own stop string did not stream the marker, so the next turn writes it.
    const ownStop = await fakeChat(plainDir, { new_tokens: 3, stopped: "stop_string", stop_string: "!", last_token: 5n }, " hi");
    await ownStop.send("hello", { max_new_tokens: 3, stop_strings: ["!"] });
    assert.equal(ownStop.nextTurnText("more"), "\nUser: more\nAssistant:");
  });

  it("sends several messages in one turn, and continues from a saved state", async () => {
    const plainDir = await mkdtemp(join(tmpdir(), "attention-sinks-plain-chat-"));
    await writeTinyTextModel(plainDir, "gpt2", { seed: 3 });
    const plain = await fakeChat(plainDir, { new_tokens: 3, stopped: "max_new_tokens", stop_string: null, last_token: 5n }, " hi");
    const first = [{ role: "system", content: "Be brief." }, { role: "user", content: "hello" }];
    await plain.sendMessages(first, { max_new_tokens: 3 });
    assert.deepEqual(plain.state, { messages: first, reply: " hi", stopped: "max_new_tokens", stop_string: null, last_token: 5n });
    const templated = await fakeChat(dir, { new_tokens: 3, stopped: "max_new_tokens", stop_string: null, last_token: 9n }, "hi you");
    await templated.sendMessages([{ role: "user", content: "hello" }], { max_new_tokens: 3 });
    // A chat built from the saved state renders the next turn as the original would.
    const restored = new Chat(templated.session, templated.state);
    assert.equal(restored.nextTurnText("and you?"), templated.nextTurnText("and you?"));
    assert.equal(restored.nextTurnText("and you?"), "</s><|user|>and you?<|assistant|>");
  });
});

describe("parsePrompts", () => {
  it("reads one prompt per line, skipping blank lines", () => {
    assert.deepEqual(parsePrompts("first\n\n  second  \r\nthird"), ["first", "  second  ", "third"]);
  });

  it("reads JSON lines with a prompt or MT-Bench turns", () => {
    const text = ['{"prompt": "a"}', "", '{"question_id": 81, "turns": ["b", "c"]}'].join("\n");
    assert.deepEqual(parsePrompts(text), ["a", "b", "c"]);
  });

  it("names the line that is wrong", () => {
    assert.throws(() => parsePrompts('{"prompt": "a"}\n{"prompt": 3}'), (e: Error) => e instanceof PromptFileError && /line 2 has neither/.test(e.message));
    assert.throws(() => parsePrompts('{"prompt": "a"}\n{oops'), (e: Error) => e instanceof PromptFileError && /line 2 is not valid JSON/.test(e.message));
  });
});

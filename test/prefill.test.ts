/**
 * A long prompt is fed in chunks; interrupting a turn during that prefill stops between chunks (the stream
 * keeps what it was fed and goes on next turn), and a turn reports its prefill and generation time apart.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import * as transformers from "@huggingface/transformers";
import { AutoModelForCausalLM } from "../src/index.js";
import { GenerationSession } from "../src/generation/session.js";
import { SinkStream } from "../src/transformers/backend.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";
import { tokenStream } from "./support/streaming.js";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const dir = await mkdtemp(join(tmpdir(), "attention-sinks-prefill-"));
after(() => rm(dir, { recursive: true, force: true }));
const tiny = await writeTinyTextModel(dir, "llama", { seed: 2 });

async function session(): Promise<{ session: GenerationSession; passes: () => number }> {
  const model = await AutoModelForCausalLM.from_pretrained(dir, { local_files_only: true, attention_sink_size: 2, attention_sink_window_size: 14 });
  const onnx = model.sessions.model as unknown as { run: (feeds: unknown) => Promise<unknown> };
  const run = onnx.run.bind(onnx);
  let passes = 0;
  let generation: GenerationSession | null = null;
  onnx.run = async (feeds) => {
    // The third chunk of the prompt asks the turn to stop, as Ctrl-C would.
    if (++passes === 3) generation!.interrupt();
    return run(feeds);
  };
  const tokenizer = await transformers.AutoTokenizer.from_pretrained(dir, { local_files_only: true });
  generation = new GenerationSession(new SinkStream(model, tokenizer));
  return { session: generation, passes: () => passes };
}

describe("prefill", () => {
  it("an interrupt during a long prompt stops between its chunks, and the stream goes on", async () => {
    const { session: s, passes } = await session();
    const prompt = tokenStream(400, tiny.spec.vocab_size, 5);
    const result = await s.generate(prompt, { max_new_tokens: 5 });
    assert.deepEqual([result.stopped, result.new_tokens, result.last_token], ["interrupted", 0, null]);
    assert.equal(passes(), 3, "no chunk after the one in flight");
    const fed = s.stats().seen_tokens;
    assert.ok(fed > 0 && fed < prompt.length, `${fed} of ${prompt.length} prompt tokens fed`);
    assert.equal(result.generation_seconds, 0);

    const next = await s.generate(tokenStream(3, tiny.spec.vocab_size, 6), { max_new_tokens: 4, min_new_tokens: 4 });
    assert.deepEqual([next.stopped, next.new_tokens], ["max_new_tokens", 4]);
    assert.equal(s.stats().seen_tokens, fed + 3 + 3);
    assert.ok(next.prefill_seconds > 0 && next.generation_seconds > 0);
    assert.ok(Math.abs(next.seconds - next.prefill_seconds - next.generation_seconds) < 1e-6);
  });
});

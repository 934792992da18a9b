/**
 * A model that returns NaN logits (non-finite weights or config values) stops generation and the perplexity
 * evaluation with an error, instead of printing <unk> for ever or writing NaN rows.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { StreamingBackend } from "../src/backend/backend.js";
import { TokenChooser } from "../src/generation/decoding.js";
import { GenerationSession } from "../src/generation/session.js";
import { evaluatePerplexity } from "../src/perplexity/evaluate.js";

/** A stream whose logits turn NaN after `healthy` feeds. */
function stream(healthy: number): StreamingBackend {
  let fed = 0;
  return {
    model_type: "llama",
    tokenizer: { encode: () => [1], decode: (ids) => ids.map(String).join(" "), has_chat_template: false, renderChat: () => "" },
    eos_token_ids: [2],
    attention_sinks: null,
    window_tokens: 16,
    endless: true,
    async feed() {
      const logits = Float32Array.from({ length: 8 }, (_, i) => i);
      if (++fed > healthy) logits[3] = NaN;
      return logits;
    },
    stats: () => ({ seen_tokens: fed, cached_tokens: fed, kv_cache_bytes: 0, kv_buffer_bytes: 0 }),
    reset() {},
    snapshot: () => Uint8Array.of(fed),
    restore(state) {
      fed = state[0];
    },
  };
}

describe("NaN logits", () => {
  it("stop a generation session, greedy or sampling", async () => {
    for (const do_sample of [false, true]) {
      const session = new GenerationSession(stream(3));
      // min_new_tokens keeps a sampled end-of-text token from ending the turn before the NaN row comes.
      await assert.rejects(session.generate([1, 4], { max_new_tokens: 10, min_new_tokens: 10, do_sample }), /NaN logits: its weights or config hold non-finite values/);
    }
    const healthy = await new GenerationSession(stream(100)).generate([1, 4], { max_new_tokens: 10, min_new_tokens: 10 });
    assert.equal(healthy.new_tokens, 10);
  });

  it("are found wherever they are in the row", () => {
    const chooser = new TokenChooser({}, 4, new Set());
    for (const at of [0, 3, 7]) {
      const logits = Float32Array.from({ length: 8 }, (_, i) => i);
      logits[at] = NaN;
      assert.throws(() => chooser.choose(logits, 0), /NaN logits/, `NaN at ${at}`);
    }
  });

  it("stop the perplexity evaluation at the token they appear", async () => {
    await assert.rejects(evaluatePerplexity(stream(5), [[1, 2, 3, 4, 5, 6, 7, 1, 2]], { num_tokens: 100 }), /NaN logits at token 6/);
  });
});

/**
 * The perplexity run tokenizes a long sample only as far as the tokens it evaluates: the ids of that
 * prefix are exactly the first ids of the whole text, for the shared models' tokenizers on the shared texts.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as transformers from "@huggingface/transformers";
import { resolveModelSource } from "../src/convert/index.js";
import { encodeSample } from "../src/perplexity/run.js";
import { TransformersTokenizer } from "../src/transformers/backend.js";
import { sharedFiles } from "./support/shared_data.js";

transformers.env.allowRemoteModels = false;

describe("encodeSample with a token budget", () => {
  for (const model of ["models/tinystories-656k", "models/stories260K/stories260K.bin"]) {
    it(`${model}: the first ids of the whole text, at least as many as wanted`, async (t) => {
      const files = sharedFiles(t, model, "data/tinystories_valid.txt", "data/tinyshakespeare.txt");
      if (!files) return;
      const [source, ...texts] = files;
      const tokenizer = new TransformersTokenizer(await transformers.AutoTokenizer.from_pretrained(await resolveModelSource(source), { local_files_only: true }));
      let checked = 0;
      for (const path of texts) {
        // A third of the text keeps the whole-text tokenization quick while leaving room for the budgets.
        const text = readFileSync(path, "utf8").slice(0, 250_000);
        const whole = encodeSample(tokenizer, text);
        for (const wanted of [2, 17, 500, 4097]) {
          const ids = encodeSample(tokenizer, text, wanted);
          assert.ok(ids.length >= wanted && ids.length < whole.length, `${path}, ${wanted}: ${ids.length} ids of ${whole.length}`);
          assert.deepEqual(ids, whole.slice(0, ids.length), `${path}, ${wanted} ids`);
          checked++;
        }
      }
      assert.equal(checked, 8);
    });
  }
});

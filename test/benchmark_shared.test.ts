/**
 * The perplexity benchmark on the real shared models and real text: `attention-sinks perplexity`, with each
 * checkpoint converted on the fly, gives per-token NLLs equal to the StreamingLLM oracle run on the
 * checkpoint's own weights, for every experiment.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AutoTokenizer } from "@huggingface/transformers";
import type { WeightTensor } from "../src/architecture/decoder_spec.js";
import { parseBenchmarkCsv, type Experiment } from "../src/perplexity/index.js";
import { openCheckpoint } from "../src/convert/formats.js";
import { resolveModelSource } from "../src/convert/index.js";
import { StreamingReference, referenceNll } from "./support/reference/streaming_reference.js";
import { runCli } from "./support/cli.js";
import { sharedFiles, sharedReference } from "./support/shared_data.js";
import { meanNextTokenNll, readLlama2cWeights, readSafetensorsLlamaWeights, type SharedWeights } from "./support/shared_weights.js";
import { experimentPolicies, logitsAt } from "./support/streaming.js";
import * as transformers from "@huggingface/transformers";

const TOLERANCE = 1e-4;
const SINKS = 4;
const WINDOW = 16;
const TOKENS = 48;
/** Enough of the validation text for TOKENS + 1 tokens with either tokenizer. */
const TEXT_CHARS = 1500;

const POLICIES = experimentPolicies(SINKS, WINDOW);

/** Each model, and its weights read from its files without the converter (see test/support/shared_weights.ts). */
const MODELS: { name: "tinystories-656k" | "stories260K"; source: string; independent: (path: string) => SharedWeights }[] = [
  { name: "tinystories-656k", source: "models/tinystories-656k", independent: readSafetensorsLlamaWeights },
  { name: "stories260K", source: "models/stories260K/stories260K.bin", independent: readLlama2cWeights },
];

describe("perplexity on the shared models equals the StreamingLLM oracle", () => {
  for (const { name, source, independent } of MODELS) {
    it(`${name}: the first ${TOKENS} NLLs of each experiment on TinyStories text`, async (t) => {
      const files = sharedFiles(t, source, "data/tinystories_valid.txt");
      const reference = sharedReference(t)?.[name];
      if (!files || !reference) return;
      const [model, text] = files;
      const dir = await mkdtemp(join(tmpdir(), "attention-sinks-shared-perplexity-"));
      const data = join(dir, "valid.txt");
      await writeFile(data, (await readFile(text, "utf8")).slice(0, TEXT_CHARS));

      // Convert once here, so the command-line runs below find the conversion cached.
      const converted = await resolveModelSource(model);
      const tokenizer = await AutoTokenizer.from_pretrained(converted, { local_files_only: true });
      const ids = tokenizer.encode(await readFile(data, "utf8"));
      assert.ok(ids.length > TOKENS, `${ids.length} tokens`);

      const checkpoint = openCheckpoint(model);
      const weights = new Map<string, WeightTensor>();
      try {
        for (const [weight, entry] of checkpoint.tensors) weights.set(weight, entry.load());
      } finally {
        checkpoint.close();
      }

      // A second oracle that owes nothing to the converter: the weights read by the file format's own layout
      // (llama2.c's Q and K unpermuted, rotating interleaved pairs), itself pinned to the independent
      // implementation's loss on the first validation story (data/reference.json).
      const own = independent(model);
      const story = reference.first_valid_story;
      const ownStoryNll = meanNextTokenNll(new StreamingReference(own.spec, own.weights, { sink_size: 0, window_size: null }).forward(story.ids), story.ids);
      assert.ok(Math.abs(ownStoryNll - story.mean_nll_nats) < 1e-4, `${name}: the independent weights give ${ownStoryNll}, the reference ${story.mean_nll_nats}`);
      // The conversion the command line runs computes that loss too.
      const dense = await transformers.AutoModelForCausalLM.from_pretrained(converted, { local_files_only: true });
      const storyInputs = {
        input_ids: new transformers.Tensor("int64", BigInt64Array.from(story.ids, BigInt), [1, story.ids.length]),
        attention_mask: new transformers.Tensor("int64", new BigInt64Array(story.ids.length).fill(1n), [1, story.ids.length]),
      };
      const { logits: storyLogits } = (await dense(storyInputs)) as { logits: transformers.Tensor };
      const convertedStoryNll = meanNextTokenNll(story.ids.map((_, i) => logitsAt(storyLogits, 0, i)), story.ids);
      assert.ok(Math.abs(convertedStoryNll - story.mean_nll_nats) < 1e-3, `${name}: the conversion gives ${convertedStoryNll}, the reference ${story.mean_nll_nats}`);
      await dense.dispose();

      await Promise.all(
        (Object.keys(POLICIES) as Experiment[]).map(async (experiment) => {
          // The model is named as a user names it: the checkpoint, not the conversion.
          const run = await runCli([
            "perplexity",
            "--experiment", experiment,
            "--model_name_or_path", model,
            "--dataset_name", data,
            "--output_dir", dir,
            "--num_tokens", String(TOKENS),
            "--window_size", String(WINDOW),
            "--attention_sink_size", String(SINKS),
          ]);
          assert.equal(run.code, 0, run.stderr);
          const csv = join(dir, `${experiment}.csv`);
          const nll = parseBenchmarkCsv(await readFile(csv, "utf8"), csv).nll;
          assert.equal(nll.length, TOKENS);
          const oracle = new StreamingReference(checkpoint.spec, weights, POLICIES[experiment]);
          const ownOracle = new StreamingReference(own.spec, own.weights, POLICIES[experiment]);
          for (let i = 0; i < TOKENS; i++) {
            const expected = referenceNll(oracle.forward([ids[i]])[0], ids[i + 1]);
            assert.ok(Math.abs(nll[i] - expected) < TOLERANCE, `${name}, ${experiment}, token ${i}: ${nll[i]} vs ${expected}`);
            const independentlyExpected = referenceNll(ownOracle.forward([ids[i]])[0], ids[i + 1]);
            assert.ok(
              Math.abs(nll[i] - independentlyExpected) < TOLERANCE,
              `${name}, ${experiment}, token ${i}: ${nll[i]} vs ${independentlyExpected} from the weights read without the converter`,
            );
          }
        }),
      );
    });
  }
});

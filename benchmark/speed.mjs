// Per-token time of the attention_sinks experiment (cache full, 4 sinks; forward pass and loss) over a bare
// onnxruntime forward pass of the model attending to as many tokens, on a model and text:
//   node benchmark/speed.mjs MODEL TEXT_FILE WINDOW        (after `npm run build`)
import { readFileSync } from "node:fs";
import { AutoTokenizer } from "@huggingface/transformers";
import { compareStepTime, resolveModelPath } from "../dist/src/benchmark/index.js";

const [model, text, window] = process.argv.slice(2);
const { path } = await resolveModelPath(model);
const tokenizer = await AutoTokenizer.from_pretrained(path, { local_files_only: true });
const tokens = tokenizer.encode(readFileSync(text, "utf8").slice(0, 50_000));
const r = await compareStepTime({ model_name_or_path: model, window_size: Number(window), attention_sink_size: 4, tokens, steps: 500, rounds: 7 });
console.log(
  `speed at ${r.cache_tokens} cached tokens: attention_sinks ${r.sink_ms.toFixed(3)} ms/token, ` +
    `bare forward ${r.bare_ms.toFixed(3)} ms/token, ratio ${r.ratio.toFixed(2)}`,
);

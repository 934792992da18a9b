/** `attention-sinks convert`: a checkpoint into a transformers.js model directory, or into a GGUF file. */
import { convertCheckpoint, convertCheckpointToGguf } from "../../convert/index.js";
import { flags, UsageError } from "../args.js";
import { defineCommand } from "../command.js";

const spec = {
  name: "convert",
  summary: "Convert a checkpoint (Hugging Face safetensors, llama2.c, GGUF) into a transformers.js model directory, or into a GGUF v3 file for llama.cpp",
  positionals: [
    { name: "SOURCE", description: "a Hugging Face directory (Llama, Mistral, Qwen2, Gemma, Phi-3, Falcon), a llama2.c .bin checkpoint, or a .gguf file" },
    {
      name: "OUT",
      description: "the directory to write (must not exist or be empty), or a new .gguf file: GGUF version 3, llama architecture, float32 weights",
    },
  ],
  flags: flags({
    tokenizer: { type: "string", metavar: "FILE", description: "the llama2.c tokenizer (tokenizer.bin) for a llama2.c checkpoint" },
    dtype: {
      type: "string",
      choices: ["fp32", "fp16", "q8", "q4", "q4f16"],
      default: "fp32",
      description:
        "also write the file transformers.js loads for this dtype: model_fp16.onnx, model_quantized.onnx (q8), model_q4.onnx or model_q4f16.onnx (model directories only; a .gguf is written in float32)",
    },
  }),
  examples: [
    "attention-sinks convert ../shared/models/stories260K/stories260K.bin stories260K --tokenizer ../shared/models/stories260K/tok512.bin",
    "attention-sinks convert ../shared/models/tinystories-656k tinystories-656k --dtype fp16",
    "attention-sinks convert ../shared/models/stories260K/stories260K.v1.gguf stories260K.gguf",
    "attention-sinks convert ../shared/models/tinystories-656k tinystories-656k-q4 --dtype q4",
  ],
};

export const convertCommand = defineCommand(spec, async ({ flags: values, positionals: [source, out] }) => {
    const started = performance.now();
    const tty = process.stderr.isTTY;
    const options = {
      tokenizer: values.tokenizer,
      onProgress: (done: number, total: number) => {
        if (tty) process.stderr.write(`\r\x1b[Kconverting: ${done}/${total} weights`);
      },
    };
    if (out.endsWith(".gguf")) {
      if (values.dtype !== "fp32") throw new UsageError("--dtype fp16 applies to model directories; a .gguf file is written with float32 weights");
      await convertCheckpointToGguf(source, out, options);
    } else {
      await convertCheckpoint(source, out, { ...options, dtype: values.dtype });
    }
    if (tty) process.stderr.write("\r\x1b[K");
    process.stderr.write(`converted ${source} -> ${out} in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
    return 0;
});

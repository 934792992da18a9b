/**
 * `attention-sinks chat`: a multi-turn conversation on one endless attention-sink cache, typed at the
 * terminal (or piped in), or run from a prompts file; the transcript goes to stdout.
 */
import { readFile } from "node:fs/promises";
import { createInterface } from "node:readline";
import { random } from "@huggingface/transformers";
import { Chat, parsePrompts, PromptFileError } from "../../generation/chat.js";
import { GenerationSession } from "../../generation/session.js";
import { flags, UsageError } from "../args.js";
import { defineCommand } from "../command.js";
import { count } from "../format.js";
import { CACHE_FLAGS, loadBackend, MODEL_FLAG, requiredString, RUNTIME_FLAGS, SAMPLING_FLAGS, samplingOptions } from "../model_flags.js";
import { handleInterrupts } from "../signals.js";
import { describeSample, JsonLines, maxRssBytes, StatusLine, streamSample, TextOutput } from "../terminal.js";
import { checkOutputFiles, describeSetup, describeSummary, OUTPUT_FLAGS } from "./generate.js";

async function readPrompts(path: string): Promise<string[]> {
  let content: string;
  try {
    content = await readFile(path, "utf8");
  } catch (error) {
    throw new UsageError(`--prompts ${path}: ${(error as Error).message}`);
  }
  let prompts: string[];
  try {
    prompts = parsePrompts(content);
  } catch (error) {
    if (error instanceof PromptFileError) throw new UsageError(`--prompts ${path}: ${error.message}`);
    throw error;
  }
  if (prompts.length === 0) throw new UsageError(`--prompts ${path}: it holds no prompts`);
  return prompts;
}

const spec = {
  name: "chat",
    summary: "Chat on one endless attention-sink cache (the model's chat template, else User:/Assistant: lines): typed, piped, or --prompts FILE.",
  flags: flags({
      ...MODEL_FLAG,
      prompts: {
        type: "string",
        metavar: "FILE",
        description: 'run the prompts of FILE in turn: one per line, or JSON lines with a "prompt" string or a "turns" array (MT-Bench); default: read messages from stdin, where /reset starts a new conversation and /exit quits',
      },
      max_new_tokens: { type: "integer", min: 1, default: 1000, metavar: "N", description: "tokens per reply at most" },
      ...CACHE_FLAGS,
      ...SAMPLING_FLAGS,
      ...RUNTIME_FLAGS,
      ...OUTPUT_FLAGS,
    }),
    examples: [
      "attention-sinks chat --model_name_or_path MODEL",
      "printf 'Hello!\\nTell me a story.\\n' | attention-sinks chat --model_name_or_path MODEL --max_new_tokens 200",
      "attention-sinks chat --model_name_or_path MODEL --prompts mt_bench/question.jsonl --max_new_tokens 256 --output transcript.txt",
    ],
};

export const chatCommand = defineCommand(spec, async ({ flags: values }) => {
    requiredString(values.model_name_or_path, "model_name_or_path");
    const sampling = samplingOptions(values);
    checkOutputFiles(values);
    const prompts = values.prompts !== undefined ? await readPrompts(values.prompts) : null;
    const backend = await loadBackend({ ...values, experiment: "attention_sinks" });
    const session = new GenerationSession(backend);
    const chat = new Chat(session);
    const format = chat.format === "chat_template" ? "the model's chat template" : "plain User:/Assistant: turns";
    process.stderr.write(`${describeSetup(backend, "attention_sinks", sampling)}; ${format}\n`);

    // Typed at a terminal: the terminal shows what is typed, so only the file gets the user's lines.
    const typed = prompts === null && process.stdin.isTTY === true;
    const input = prompts === null ? createInterface({ input: process.stdin, terminal: false }) : null;
    if (typed) process.stderr.write("Type a message and press Enter; /reset starts a new conversation, /exit or Ctrl-D quits.\n");

    const stats = new JsonLines(values.stats_json);
    const status = new StatusLine();
    let replying = false;
    let interrupted = false;
    // Ctrl-C stops the reply; typed at a terminal the chat goes on, otherwise (and between replies) it ends.
    const interrupts = handleInterrupts(() => {
      if (replying) session.interrupt();
      if (!replying || !typed) interrupted = true;
      if (!replying) input?.close();
    });
    const text = new TextOutput(values.output, () => (replying ? session.interrupt() : input?.close()));
    const totals = { replies: 0, prompt_tokens: 0, prefill_seconds: 0, new_tokens: 0, generation_seconds: 0, seconds: 0, stopped: "end of input" };

    const reply = async (message: string) => {
      if (typed) text.toFile(`User: ${message}\n`);
      else text.write(`User: ${message}\n`);
      text.write("Assistant:");
      let started = false;
      const turnStart = performance.now();
      const sample = (tokens: number, seconds: number) => streamSample(tokens, seconds, session.stats());
      replying = true;
      const result = await chat.send(message, {
        ...sampling,
        max_new_tokens: values.max_new_tokens,
        // One space after "Assistant:", whatever the reply starts with.
        onText: (piece) => {
          if (!started) piece = piece.trimStart();
          if (!piece) return;
          text.write(started ? piece : ` ${piece}`);
          started = true;
        },
        onToken: (tokens) => status.update(() => describeSample(sample(tokens, (performance.now() - turnStart) / 1000))),
      });
      replying = false;
      interrupts.rearm();
      status.clear();
      text.write("\n\n");
      totals.replies++;
      totals.new_tokens += result.new_tokens;
      totals.seconds += result.seconds;
      totals.prompt_tokens += result.prompt_tokens;
      totals.prefill_seconds += result.prefill_seconds;
      totals.generation_seconds += result.generation_seconds;
      const { prompt_tokens, new_tokens, stopped } = result;
      stats.write({ event: "turn", turn: totals.replies, prompt_tokens, new_tokens, stopped, ...sample(new_tokens, result.seconds) });
    };

    if (values.seed !== undefined) random.seed(values.seed);
    try {
      if (typed) text.toTerminal("User: ");
      for await (const line of input ?? prompts!) {
        const message = line.trim();
        if (input && message === "/exit") {
          totals.stopped = "/exit";
          break;
        }
        if (input && message === "/reset") {
          chat.reset();
          process.stderr.write("(new conversation)\n");
        } else if (message) {
          await reply(message);
        }
        if (interrupted || text.stdoutClosed) break;
        if (typed) text.toTerminal("User: ");
      }
    } finally {
      interrupts.uninstall();
      input?.close();
      status.clear();
      text.close();
    }
    if (interrupted) totals.stopped = "interrupted";
    else if (text.stdoutClosed) totals.stopped = "output closed";
    const final = streamSample(totals.new_tokens, totals.seconds, session.stats());
    stats.write({ event: "summary", replies: totals.replies, ...final, stopped: totals.stopped, max_rss_bytes: maxRssBytes() });
    stats.close();
    const [prefill, tokens, cache] = describeSummary(totals, final);
    process.stderr.write(`${prefill}\n${count(totals.replies)} ${totals.replies === 1 ? "reply" : "replies"}, ${tokens}\n${cache}\n`);
    return interrupted ? (interrupts.exitCode ?? 130) : 0;
});

/**
 * `attention-sinks chat` driven as a user would: messages on a real stdin or in a prompts file, the
 * transcript on stdout; on tiny fixtures (with and without a chat template) and on TinyStories-656K.
 */
import { before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UsageError } from "../src/cli/args.js";
import { chatCommand } from "../src/cli/commands/chat.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";
import { jsonLines, runCli, type CliOptions } from "./support/cli.js";
import { sharedFiles } from "./support/shared_data.js";

const chat = (args: readonly string[], options?: CliOptions) => runCli(["chat", ...args], options);

type Record = { [key: string]: number | string };

async function records(path: string): Promise<Record[]> {
  return jsonLines(await readFile(path, "utf8"));
}

let scratch = "";
let templated = "";
let plain = "";
before(async () => {
  scratch = await mkdtemp(join(tmpdir(), "attention-sinks-cli-chat-"));
  templated = join(scratch, "llama-chat");
  plain = join(scratch, "gpt2-plain");
  await writeTinyTextModel(templated, "llama", { seed: 7, chat_template: true });
  await writeTinyTextModel(plain, "gpt2", { seed: 7 });
});

describe("chat: help and usage errors", () => {
  it("`chat --help` lists every option and the in-chat commands", async () => {
    const help = await chat(["--help"]);
    assert.equal(help.code, 0);
    for (const flag of ["model_name_or_path", "prompts", "max_new_tokens", "attention_sink_size", "attention_sink_window_size", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "output", "stats_json"]) {
      assert.ok(help.stdout.includes(`--${flag}`), `--${flag} in chat --help`);
    }
    assert.match(help.stdout, /\/reset starts a new conversation and \/exit quits/);
  });

  it("wrong flags, values and prompt files get a message naming them and exit code 2", async () => {
    await writeFile(join(scratch, "bad.jsonl"), '{"prompt": "fine"}\n{"text": "no prompt"}\n');
    await writeFile(join(scratch, "empty.txt"), "\n\n");
    const model = ["--model_name_or_path", plain];
    const run = await chat([...model, "--prompts", join(scratch, "bad.jsonl")]);
    assert.equal(run.code, 2, run.stderr);
    assert.match(run.stderr, /^attention-sinks chat: --prompts .*bad\.jsonl: line 2 has neither a "prompt" string nor a "turns" array of strings$/m);
    assert.match(run.stderr, /usage: attention-sinks chat \[options\]/);
    const cases: [string[], RegExp][] = [
      [[...model, "--prompt", "hi"], /unknown option '--prompt'/],
      [[...model, "--top_k", "5"], /--top_k only applies to sampling: add --do_sample/],
      [[...model, "--prompts", join(scratch, "missing.txt")], /--prompts .*missing\.txt: ENOENT/],
      [[...model, "--prompts", join(scratch, "empty.txt")], /empty\.txt: it holds no prompts/],
    ];
    for (const [args, message] of cases) {
      await assert.rejects(
        chatCommand.execute(args),
        (error: Error) => error instanceof UsageError && message.test(error.message),
        args.join(" "),
      );
    }
  });
});

describe("chat on tiny models", () => {
  it("reads messages from stdin with /reset and /exit, using the model's chat template", async () => {
    const stats = join(scratch, "stdin.jsonl");
    const run = await chat(["--model_name_or_path", templated, "--max_new_tokens", "12", "--attention_sink_window_size", "20", "--stats_json", stats], {
      input: "hello there\nhow are you\n\n/reset\nagain\n/exit\nnever sent\n",
    });
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, /the model's chat template/);
    assert.match(run.stderr, /\(new conversation\)/);
    assert.match(run.stderr, /^3 replies, 36 tokens in .*; stopped: \/exit$/m);
    assert.deepEqual(
      run.stdout.match(/^User: .*$/gm),
      ["User: hello there", "User: how are you", "User: again"],
    );
    assert.equal(run.stdout.match(/^Assistant:/gm)?.length, 3);
    const turns = (await records(stats)).filter((r) => r.event === "turn");
    assert.deepEqual(
      turns.map((r) => [r.turn, r.new_tokens, r.stopped]),
      [[1, 12, "max_new_tokens"], [2, 12, "max_new_tokens"], [3, 12, "max_new_tokens"]],
    );
    // "<s><|user|>hello there<|assistant|>", then "</s><|user|>how are you<|assistant|>" after the cut reply.
    assert.equal(turns[1].seen_tokens, (turns[0].prompt_tokens as number) + 12 + (turns[1].prompt_tokens as number) + 11);
    assert.equal(turns[1].cached_tokens, 24);
    // After /reset the stream starts over.
    assert.equal(turns[2].seen_tokens, (turns[2].prompt_tokens as number) + 11);
  });

  it("runs a prompts file (JSON lines with turns) without a template, writing the transcript to --output too", async () => {
    const prompts = join(scratch, "questions.jsonl");
    await writeFile(prompts, ['{"question_id": 1, "turns": ["the cat sat", "and then?"]}', '{"prompt": "once upon a time"}'].join("\n"));
    const output = join(scratch, "transcript.txt");
    const run = await chat(["--model_name_or_path", plain, "--prompts", prompts, "--max_new_tokens", "16", "--output", output]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, /plain User:\/Assistant: turns/);
    assert.deepEqual(run.stdout.match(/^User: .*$/gm), ["User: the cat sat", "User: and then?", "User: once upon a time"]);
    assert.match(run.stdout, /^User: the cat sat\nAssistant: [^\n]*\n\nUser: and then\?\nAssistant: /);
    assert.equal(await readFile(output, "utf8"), run.stdout);
    assert.match(run.stderr, /^3 replies, .*; stopped: end of input$/m);
  });

  it("Ctrl-C ends the run after the current reply, flushing the transcript and printing the summary", async () => {
    const prompts = join(scratch, "many.txt");
    await writeFile(prompts, Array.from({ length: 200 }, (_, i) => `story number ${i}`).join("\n"));
    const stats = join(scratch, "interrupted.jsonl");
    const run = await chat(["--model_name_or_path", plain, "--prompts", prompts, "--max_new_tokens", "5000", "--stats_json", stats], { interrupt: 300 });
    assert.equal(run.code, 130, run.stderr);
    assert.match(run.stderr, /stopped: interrupted/);
    assert.ok(run.stdout.endsWith("\n"));
    const summary = (await records(stats)).at(-1)!;
    assert.equal(summary.stopped, "interrupted");
    assert.ok((summary.replies as number) < 200);
  });
});

describe("chat on TinyStories-656K", () => {
  it("50 prompts in one conversation keep the cache bounded", { timeout: 180_000 }, async (t) => {
    const [model, , stories] = sharedFiles(t, "models/tinystories-656k", "models/tinystories-656k/model.safetensors", "data/tinystories_valid.txt") ?? [];
    if (!model) return;
    const openings = (await readFile(stories, "utf8"))
      .split("\n")
      .filter((line) => line.startsWith("Once upon a time"))
      .map((line) => line.slice(0, line.indexOf(".") + 1))
      .slice(0, 50);
    assert.equal(openings.length, 50);
    const prompts = join(scratch, "openings.txt");
    await writeFile(prompts, openings.join("\n"));
    const stats = join(scratch, "openings.jsonl");
    const run = await chat(["--model_name_or_path", model, "--prompts", prompts, "--max_new_tokens", "64", "--attention_sink_window_size", "252", "--stats_json", stats]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, /4 sink \+ 252 window tokens; greedy decoding; plain User:\/Assistant: turns/);
    assert.equal(run.stdout.match(/^User: Once upon a time/gm)?.length, 50);
    const turns = (await records(stats)).filter((r) => r.event === "turn");
    assert.equal(turns.length, 50);
    const full = turns.findIndex((r) => r.cached_tokens === 256);
    assert.ok(full > 0, "the cache fills");
    for (const r of turns) {
      assert.ok((r.cached_tokens as number) <= 256 && (r.kv_cache_bytes as number) <= 256 * 1024, `turn ${r.turn}`);
    }
    for (const r of turns.slice(full)) assert.equal(r.kv_cache_bytes, 256 * 1024, `turn ${r.turn}`);
    const seen = turns.at(-1)!.seen_tokens as number;
    assert.ok(seen > 10 * 256, `the conversation streamed ${seen} tokens through a 256-token cache`);
  });
});

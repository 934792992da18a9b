/**
 * `attention-sinks serve` on loopback, driven by OpenAI's own npm client where it can be: chat (plain and
 * streamed), completions, errors and the API key; sessions that continue (new message only, or the whole
 * transcript), stay constant in size over 200 turns, run 8 at a time without mixing, survive a client
 * leaving mid-stream, SIGKILL, SIGTERM and corrupt files, and cannot name a path outside the state folder.
 * The model is a tiny random-weight llama with a chat template, so replies are arbitrary text but
 * deterministic under greedy decoding: the same conversation state always gives the same reply.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { spawn } from "node:child_process";
import { connect, createServer as createNetServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as transformers from "@huggingface/transformers";
import OpenAI from "openai";
import { createApiServer } from "../src/server/http_server.js";
import { ModelService, type ModelServiceOptions, type SessionInfo } from "../src/server/model_service.js";
import { encodeSessionState } from "../src/server/session_state.js";
import { FolderStore } from "../src/server/session_store.js";
import { loadTransformersBackend } from "../src/transformers/backend.js";
import { writeTinyTextModel } from "./support/fixtures/tiny_tokenizer.js";
import { runCli } from "./support/cli.js";
import { startServer } from "./support/server.js";
import { systemProgram } from "./support/system_package.js";

transformers.env.allowRemoteModels = false;

const SIZES = { attention_sink_size: 4, attention_sink_window_size: 28 };
const SIZE_FLAGS = ["--attention_sink_size", "4", "--attention_sink_window_size", "28"];

let scratch = "";
let model = "";
before(async () => {
  scratch = await mkdtemp(join(tmpdir(), "attention-sinks-server-"));
  model = join(scratch, "llama-chat");
  await writeTinyTextModel(model, "llama", { seed: 7, chat_template: true });
});
after(() => rm(scratch, { recursive: true, force: true }));

interface Running {
  url: string;
  client: OpenAI;
  service: ModelService;
  store: FolderStore;
  warnings: string[];
  close(): Promise<void>;
}

let servers = 0;
/** An in-process server on a free loopback port, with its own folder store. */
async function serve(options: Partial<ModelServiceOptions> & { api_key?: string; max_body_bytes?: number; store?: FolderStore } = {}): Promise<Running> {
  const backend = await loadTransformersBackend(model, SIZES);
  const store = options.store ?? (await FolderStore.open(join(scratch, `state-${servers++}`)));
  const warnings: string[] = [];
  const service = new ModelService(backend, store, {
    model: "tiny",
    state_signature: "tiny llama",
    max_tokens: 600,
    sampling: { do_sample: false },
    max_queue: 32,
    max_sessions: 16,
    idle_seconds: 300,
    warn: (message) => warnings.push(message),
    ...options,
  });
  const server = createApiServer(service, { api_key: options.api_key, max_body_bytes: options.max_body_bytes ?? 65536, log: (message) => warnings.push(message) });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  return {
    url,
    client: new OpenAI({ baseURL: url, apiKey: options.api_key ?? "none", maxRetries: 0 }),
    service,
    store,
    warnings,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await service.close();
    },
  };
}

type Reply = { text: string; finish_reason: string; usage: { prompt_tokens: number; completion_tokens: number }; session: SessionInfo };

/** One chat turn by plain fetch, so the body may carry session_id and the session counters are typed. */
async function turn(url: string, body: Record<string, unknown>): Promise<Reply> {
  const response = await fetch(`${url}/chat/completions`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model: "tiny", ...body }) });
  const json = (await response.json()) as { choices: { message: { content: string }; finish_reason: string }[]; usage: Reply["usage"]; session: SessionInfo };
  assert.equal(response.status, 200, JSON.stringify(json));
  return { text: json.choices[0].message.content, finish_reason: json.choices[0].finish_reason, usage: json.usage, session: json.session };
}

const user = (content: string) => ({ role: "user" as const, content });

describe("serve: the OpenAI API, through the openai npm client", () => {
  let running: Running;
  before(async () => {
    running = await serve();
  });
  after(() => running.close());

  it("lists the model, answers a chat (plain and streamed alike) and a completion", async () => {
    const { client } = running;
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((entry) => entry.id),
      ["tiny"],
    );
    assert.equal((await client.models.retrieve("tiny")).id, "tiny");
    await assert.rejects(client.models.retrieve("other"), OpenAI.NotFoundError);
    const messages = [user("hello there")];
    const completion = await client.chat.completions.create({ model: "tiny", messages, max_tokens: 12 });
    const [choice] = completion.choices;
    assert.equal(completion.object, "chat.completion");
    assert.equal(choice.message.role, "assistant");
    assert.ok(choice.message.content && choice.message.content.length > 0, "a reply");
    assert.ok(["stop", "length"].includes(choice.finish_reason));
    assert.equal(completion.usage?.completion_tokens, choice.finish_reason === "length" ? 12 : completion.usage?.completion_tokens);
    assert.equal(completion.usage?.total_tokens, completion.usage!.prompt_tokens + completion.usage!.completion_tokens);

    const stream = await client.chat.completions.create({ model: "tiny", messages, max_tokens: 12, stream: true, stream_options: { include_usage: true } });
    let streamed = "";
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      streamed += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      usage = chunk.usage ?? usage;
    }
    assert.equal(streamed, choice.message.content, "stateless greedy turns give the same text, streamed or not");
    assert.equal(finish, choice.finish_reason);
    assert.deepEqual(usage, completion.usage);

    const text = await client.completions.create({ model: "tiny", prompt: "once upon a time", max_tokens: 8 });
    assert.equal(text.object, "text_completion");
    assert.equal(text.usage?.completion_tokens, text.choices[0].finish_reason === "length" ? 8 : text.usage?.completion_tokens);
    let streamedText = "";
    for await (const chunk of await client.completions.create({ model: "tiny", prompt: "once upon a time", max_tokens: 8, stream: true })) streamedText += chunk.choices[0]?.text ?? "";
    assert.equal(streamedText, text.choices[0].text);
  });

  it("bad fields get a 400 naming the field; malformed JSON, unknown routes and methods get their errors", async () => {
    const { client, url } = running;
    const cases: [Record<string, unknown>, string][] = [
      [{ temperature: 5 }, "temperature"],
      [{ max_tokens: 601 }, "max_tokens"],
      [{ max_tokens: 0 }, "max_tokens"],
      [{ top_p: 0 }, "top_p"],
      [{ stop: ["a", "b", "c", "d", "e"] }, "stop"],
      [{ n: 2 }, "n"],
      [{ messages: [] }, "messages"],
      [{ messages: [{ role: "wizard", content: "hi" }] }, "messages[0].role"],
      [{ messages: [{ role: "user", content: 42 }] }, "messages[0].content"],
      [{ session_id: "" }, "session_id"],
      [{ session_id: "a\nb" }, "session_id"],
    ];
    for (const [fields, param] of cases) {
      const body = { model: "tiny", messages: [user("hi")], max_tokens: 4, ...fields } as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming;
      await assert.rejects(client.chat.completions.create(body), (error: unknown) => {
        assert.ok(error instanceof OpenAI.BadRequestError, `${JSON.stringify(fields)}: ${String(error)}`);
        assert.equal(error.param, param);
        assert.match(error.message, new RegExp(param.replace(/[[\]]/g, "\\$&")));
        return true;
      });
    }
    const raw = async (path: string, init: RequestInit) => {
      const response = await fetch(`${url}${path}`, init);
      return { status: response.status, body: (await response.json()) as { error: { message: string; type: string; code: string | null } } };
    };
    const malformed = await raw("/chat/completions", { method: "POST", body: '{"model": "tiny", "messages": [' });
    assert.equal(malformed.status, 400);
    assert.equal(malformed.body.error.code, "invalid_json");
    assert.match(malformed.body.error.message, /not valid JSON/);
    assert.equal((await raw("/chat/completions", { method: "POST", body: "[1, 2]" })).status, 400);
    assert.equal((await raw("/embeddings", { method: "POST", body: "{}" })).status, 404);
    assert.equal((await raw("/chat/completions", { method: "GET" })).status, 405);
    // The server still answers.
    assert.ok((await client.chat.completions.create({ model: "tiny", messages: [user("hi")], max_tokens: 2 })).choices[0].message);
  });

  it("a body over the limit is answered 413 whether it declares its length or not", async () => {
    const small = await serve({ max_body_bytes: 2048 });
    try {
      const body = JSON.stringify({ model: "tiny", messages: [user("x".repeat(10_000))] });
      const declared = await fetch(`${small.url}/chat/completions`, { method: "POST", body });
      assert.equal(declared.status, 413);
      assert.equal(((await declared.json()) as { error: { code: string } }).error.code, "request_too_large");
      // Chunked, so the server only finds out while reading.
      const chunked = await new Promise<number>((resolve, reject) => {
        const request = httpRequest(`${small.url}/chat/completions`, { method: "POST", headers: { "Transfer-Encoding": "chunked" } }, (response) => {
          response.resume();
          resolve(response.statusCode ?? 0);
        });
        request.on("error", reject);
        for (let i = 0; i < 5; i++) request.write(body.slice(i * 2000, (i + 1) * 2000));
        request.end();
      });
      assert.equal(chunked, 413);
      assert.ok((await small.client.chat.completions.create({ model: "tiny", messages: [user("hi")], max_tokens: 2 })).choices[0].message, "still serving");
    } finally {
      await small.close();
    }
  });

  it("with an API key, a request without it or with another gets 401; with it, 200", async () => {
    const keyed = await serve({ api_key: "sk-test-key" });
    assert.deepEqual((await keyed.client.models.list()).data.map((entry) => entry.id), ["tiny"]);
    for (const apiKey of ["sk-wrong", "sk-test-ke"]) {
      const wrong = new OpenAI({ baseURL: keyed.url, apiKey, maxRetries: 0 });
      await assert.rejects(wrong.chat.completions.create({ model: "tiny", messages: [user("hi")] }), (error: unknown) => error instanceof OpenAI.AuthenticationError && error.code === "invalid_api_key");
    }
    const none = await fetch(`${keyed.url}/models`);
    assert.equal(none.status, 401);
    assert.match(((await none.json()) as { error: { message: string } }).error.message, /Authorization: Bearer KEY/);
    await keyed.close();
  });
});

describe("serve: sessions", () => {
  let running: Running;
  before(async () => {
    running = await serve();
  });
  after(() => running.close());

  it("continue from the new message alone or from the whole transcript, by header or body field, alike", async () => {
    const { client, url } = running;
    const questions = ["hello there", "and then?", "tell me more", "why so?"];
    const transcript: { role: "user" | "assistant"; content: string }[] = [];
    const byHeader: string[] = [];
    for (const question of questions) {
      transcript.push(user(question));
      const reply = await client.chat.completions.create({ model: "tiny", messages: transcript, max_tokens: 6 }, { headers: { "X-Session-Id": "whole transcript" } });
      const content = reply.choices[0].message.content ?? "";
      byHeader.push(content);
      transcript.push({ role: "assistant", content });
    }
    const newOnly: Reply[] = [];
    for (const question of questions) newOnly.push(await turn(url, { session_id: "new message only", messages: [user(question)], max_tokens: 6 }));
    assert.deepEqual(
      newOnly.map((reply) => reply.text),
      byHeader,
    );
    // The stream was fed each message once: the tokens the session has seen are those the turns report.
    const fed = newOnly.reduce((sum, reply) => sum + reply.usage.prompt_tokens + reply.usage.completion_tokens, 0);
    assert.equal(newOnly.at(-1)!.session.seen_tokens, fed - 1, "every token fed once (the last one generated is fed by the next turn)");
    // A stateless request of the whole transcript is a different thing: one prompt, no session.
    const stateless = await turn(url, { messages: transcript.concat(user("one more")), max_tokens: 6 });
    assert.equal(stateless.session, undefined);
  });

  it("200 turns keep the KV bytes and the saved state's size constant once the cache is full", async () => {
    const { url, service, store } = running;
    const kvBytes = new Set<number>();
    const stateBytes = new Set<number>();
    let rssAfterWarmup = 0;
    let last: Reply | null = null;
    for (let i = 0; i < 200; i++) {
      last = await turn(url, { session_id: "long", messages: [user(`turn ${i % 10}`)], max_tokens: 4 });
      if (i === 20) rssAfterWarmup = process.memoryUsage().rss;
      if (i >= 20) {
        kvBytes.add(last.session.kv_cache_bytes);
        stateBytes.add(last.session.state_bytes);
      }
    }
    assert.ok(last!.session.seen_tokens > 5 * 32, `the stream ran far past its 32-token cache (${last!.session.seen_tokens} tokens)`);
    assert.deepEqual([...kvBytes], [service.stats().kv_cache_bytes], "one KV size from turn 20 to 200");
    // The stream's record is constant (test/stream_state.test.ts); only the last exchange's text varies.
    const spread = Math.max(...stateBytes) - Math.min(...stateBytes);
    assert.ok(spread < 64, `state sizes from turn 20 to 200 within ${spread} bytes of each other`);
    const rssGrowth = process.memoryUsage().rss - rssAfterWarmup;
    assert.ok(rssGrowth < 64 * 2 ** 20, `RSS grew ${(rssGrowth / 2 ** 20).toFixed(1)} MiB over 180 turns`);
    assert.ok(service.sessions_in_memory <= 16);
    const files = await readdir(store.location);
    assert.equal(files.filter((name) => name.endsWith(".tmp")).length, 0, "no temporary file left");
  });

  it("8 sessions in parallel x 25 turns: nothing lost, nothing mixed (each as it runs alone)", async () => {
    const { url } = running;
    const run = async (session_id: string, base: number) => {
      const replies: Reply[] = [];
      for (let i = 0; i < 25; i++) replies.push(await turn(url, { session_id, messages: [user(`s${base} q${i % 5}`)], max_tokens: 3 }));
      return replies;
    };
    const parallel = await Promise.all(Array.from({ length: 8 }, (_, s) => run(`parallel ${s}`, s)));
    for (const [s, replies] of parallel.entries()) {
      const fed = replies.reduce((sum, reply) => sum + reply.usage.prompt_tokens + reply.usage.completion_tokens, 0);
      assert.equal(replies.at(-1)!.session.seen_tokens, fed - 1, `session ${s}: every turn's tokens fed once`);
    }
    for (const s of [0, 5]) {
      const alone = await run(`alone ${s}`, s);
      assert.deepEqual(
        alone.map((reply) => reply.text),
        parallel[s].map((reply) => reply.text),
        `session ${s} alone gives the replies it gave among 7 others`,
      );
    }
  });

  it("a client that leaves mid-stream stops the generation; the session goes on consistently", async () => {
    const { client, url } = running;
    const prompt = [user("a long story please")];
    // Precondition: from this state the model runs 500 tokens without an end-of-text token.
    const unbounded = await turn(url, { messages: prompt, max_tokens: 500 });
    assert.equal(unbounded.finish_reason, "length");
    const stream = await client.chat.completions.create({ model: "tiny", messages: prompt, max_tokens: 500, stream: true }, { headers: { "X-Session-Id": "left" } });
    for await (const chunk of stream) if (chunk.choices[0]?.delta.content) break; // leaving the loop aborts the request
    const next = await turn(url, { session_id: "left", messages: [user("still there?")], max_tokens: 5 });
    const aborted = next.session.seen_tokens - (next.usage.prompt_tokens + next.usage.completion_tokens - 1);
    assert.ok(aborted < 400, `the aborted turn stopped early: ${aborted} tokens fed of its 500+`);
    assert.ok(aborted >= unbounded.usage.prompt_tokens, "its prompt is in the stream");
  });

  it("a corrupt, truncated or foreign state file resets that session with a warning", async () => {
    const { url, store, warnings } = running;
    const fresh = await turn(url, { session_id: "reference", messages: [user("hello there")], max_tokens: 5 });
    await turn(url, { session_id: "victim", messages: [user("hello there")], max_tokens: 5 });
    const good = (await store.load("victim"))!;
    const foreign = encodeSessionState({ model: "another model", stream: new Uint8Array(8), pending_token: null, chat: null, messages_seen: 0, messages_digest: "" });
    const flipped = good.slice();
    flipped[100] ^= 0xff;
    const broken: [string, Uint8Array][] = [
      ["garbage", new TextEncoder().encode("not a state at all")],
      ["flipped", flipped],
      ["truncated", good.subarray(0, good.length / 2)],
      ["foreign", foreign],
    ];
    for (const [name, bytes] of broken) {
      running.service["memory"].clear(); // read the file, not the copy in memory
      await writeFile(store.path("victim"), bytes);
      const before = warnings.length;
      const reply = await turn(url, { session_id: "victim", messages: [user("hello there")], max_tokens: 5 });
      assert.equal(reply.text, fresh.text, `${name}: the session started anew`);
      assert.equal(reply.session.seen_tokens, fresh.session.seen_tokens);
      assert.equal(warnings.length, before + 1, `${name}: one warning`);
      assert.match(warnings.at(-1)!, /session "victim": its saved state in .* cannot be used \(.+\); starting it anew/);
    }
  });

  it("a session id with ../ stays a name: its state is one hashed file inside the state folder", async () => {
    const parent = await mkdtemp(join(scratch, "escape-"));
    const store = await FolderStore.open(join(parent, "state"));
    const contained = await serve({ store });
    try {
      for (const id of ["../../escaped", "../state-sibling", "/etc/passwd", "..", "%2e%2e%2fx"]) await turn(contained.url, { session_id: id, messages: [user("hi")], max_tokens: 2 });
      assert.deepEqual(await readdir(parent), ["state"], "nothing written beside the state folder");
      const files = await readdir(store.location);
      assert.equal(files.length, 5);
      for (const file of files) assert.match(file, /^[0-9a-f]{64}\.state$/);
    } finally {
      await contained.close();
    }
  });

  it("beyond --max_sessions the least recently used leave memory and continue from the store as if they had stayed", async () => {
    const small = await serve({ max_sessions: 2 });
    try {
      const questions = ["hello there", "and then?", "tell me more"];
      const replies = new Map<string, string[]>();
      for (const question of questions) {
        for (const id of ["one", "two", "three"]) replies.set(id, [...(replies.get(id) ?? []), (await turn(small.url, { session_id: id, messages: [user(question)], max_tokens: 4 })).text]);
        assert.equal(small.service.sessions_in_memory, 2);
      }
      // Every session was read back from its file on each turn after the first; the session kept in memory the whole time replies alike.
      const kept: string[] = [];
      for (const question of questions) kept.push((await running.client.chat.completions.create({ model: "tiny", messages: [user(question)], max_tokens: 4 }, { headers: { "X-Session-Id": "kept in memory" } })).choices[0].message.content ?? "");
      for (const id of ["one", "two", "three"]) assert.deepEqual(replies.get(id), kept, id);
    } finally {
      await small.close();
    }
  });

  it("a full queue answers 429 with Retry-After", async () => {
    const busy = await serve({ max_queue: 1 });
    try {
      const body = JSON.stringify({ model: "tiny", messages: [user("a long story please")], max_tokens: 500 });
      const post = () => fetch(`${busy.url}/chat/completions`, { method: "POST", body });
      const [first, second, third] = await Promise.all([post(), post(), post()]);
      const statuses = [first.status, second.status, third.status];
      assert.deepEqual([...statuses].sort(), [200, 200, 429], `${statuses}`);
      const refused = [first, second, third].find((response) => response.status === 429)!;
      assert.match(refused.headers.get("retry-after") ?? "", /^\d+$/);
      const error = ((await refused.json()) as { error: { code: string; type: string } }).error;
      assert.equal(error.code, "rate_limit_exceeded");
      await assert.rejects(
        Promise.all([0, 1, 2].map(() => busy.client.chat.completions.create({ model: "tiny", messages: [user("a long story please")], max_tokens: 500 }))),
        OpenAI.RateLimitError,
      );
    } finally {
      await busy.close();
    }
  });
});

describe("serve: the process", () => {
  it("`serve --help` lists its options; conflicting or malformed store options are usage errors", async () => {
    const help = await runCli(["serve", "--help"]);
    assert.equal(help.code, 0);
    for (const flag of ["model_name_or_path", "host", "port", "api_key", "state_dir", "state_store", "max_sessions", "max_queue", "max_new_tokens", "max_body_bytes", "attention_sink_size", "do_sample", "dtype"]) {
      assert.ok(help.stdout.includes(`--${flag}`), `--${flag} in serve --help`);
    }
    const cases: [string[], RegExp][] = [
      [["--state_dir", scratch, "--state_store", "redis://127.0.0.1:6379"], /give --state_dir or --state_store, not both/],
      [["--state_store", "redis://user:pw@127.0.0.1:6379"], /--state_store .*give redis:\/\/HOST:PORT/],
      [["--state_store", "http://127.0.0.1"], /--state_store .*give redis:\/\/HOST:PORT/],
      [["--port", "70000"], /--port/],
    ];
    for (const [args, message] of cases) {
      const run = await runCli(["serve", "--model_name_or_path", model, ...args]);
      assert.equal(run.code, 2, run.stderr);
      assert.match(run.stderr, message);
    }
  });

  it("SIGKILL mid-reply loses only that reply; a restart continues; SIGTERM saves the running reply and exits 0", async () => {
    const stateDir = join(scratch, "process-state");
    const args = ["--model_name_or_path", model, ...SIZE_FLAGS, "--state_dir", stateDir];
    const questions = ["hello there", "and then?", "tell me more"];
    const first = await startServer(args);
    let acknowledged: Reply | null = null;
    for (const question of questions) acknowledged = await turn(first.url, { session_id: "kept", messages: [user(question)], max_tokens: 4 });
    // A long reply, killed after its first piece: it was never acknowledged.
    const response = await fetch(`${first.url}/chat/completions`, {
      method: "POST",
      body: JSON.stringify({ model: "tiny", session_id: "kept", messages: [user("a long story please")], max_tokens: 500, stream: true }),
    });
    const reader = response.body!.getReader();
    await reader.read();
    first.child.kill("SIGKILL");
    await first.exited;
    await reader.read().catch(() => undefined);

    const second = await startServer(args);
    const resumed = await turn(second.url, { session_id: "kept", messages: [user("why so?")], max_tokens: 4 });
    assert.equal(resumed.session.seen_tokens, acknowledged!.session.seen_tokens + resumed.usage.prompt_tokens + resumed.usage.completion_tokens, "resumed right after the last acknowledged turn");
    // The same conversation on a session that was never interrupted gives the same reply.
    for (const question of questions) await turn(second.url, { session_id: "uninterrupted", messages: [user(question)], max_tokens: 4 });
    assert.equal((await turn(second.url, { session_id: "uninterrupted", messages: [user("why so?")], max_tokens: 4 })).text, resumed.text);

    // SIGTERM during a long reply: the reply stops, is saved, and the process exits 0.
    const long = await fetch(`${second.url}/chat/completions`, {
      method: "POST",
      body: JSON.stringify({ model: "tiny", session_id: "kept", messages: [user("a long story please")], max_tokens: 500, stream: true }),
    });
    const longReader = long.body!.getReader();
    await longReader.read();
    second.child.kill("SIGTERM");
    let events = "";
    for (let chunk = await longReader.read(); !chunk.done; chunk = await longReader.read()) events += new TextDecoder().decode(chunk.value);
    assert.match(events, /data: \[DONE\]/, "the stream ends properly");
    const { code } = await second.exited;
    assert.equal(code, 0, second.stderr());
    assert.match(second.stderr(), /stopping: saving sessions\nstopped\n/);

    const third = await startServer(args);
    try {
      const after = await turn(third.url, { session_id: "kept", messages: [user("still there?")], max_tokens: 4 });
      const interrupted = after.session.seen_tokens - resumed.session.seen_tokens - (after.usage.prompt_tokens + after.usage.completion_tokens);
      assert.ok(interrupted > 0 && interrupted < 400, `the reply SIGTERM stopped is in the stream: ${interrupted} tokens`);
    } finally {
      third.child.kill("SIGTERM");
      await third.exited;
    }
  });

  it("two processes sharing Redis continue one session alternately, with the text one process gives", async (t) => {
    const redisServer = systemProgram(t, "redis-server", "redis-server");
    if (!redisServer) return;
    const port = await freePort();
    const redis = spawn(redisServer, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
    try {
      await waitForPort(port);
      const shared = ["--model_name_or_path", model, ...SIZE_FLAGS, "--state_store", `redis://127.0.0.1:${port}`];
      const [a, b] = await Promise.all([startServer(shared), startServer(shared)]);
      const solo = await startServer(["--model_name_or_path", model, ...SIZE_FLAGS, "--state_dir", join(scratch, "solo-state")]);
      try {
        const questions = ["hello there", "and then?", "tell me more", "why so?", "still there?", "one more"];
        const alternating: Reply[] = [];
        for (const [i, question] of questions.entries()) alternating.push(await turn([a, b][i % 2].url, { session_id: "shared", messages: [user(question)], max_tokens: 5 }));
        const alone: Reply[] = [];
        for (const question of questions) alone.push(await turn(solo.url, { session_id: "shared", messages: [user(question)], max_tokens: 5 }));
        assert.deepEqual(
          alternating.map((reply) => reply.text),
          alone.map((reply) => reply.text),
        );
        assert.deepEqual(alternating.at(-1)!.session, alone.at(-1)!.session);
      } finally {
        for (const server of [a, b, solo]) server.child.kill("SIGTERM");
        await Promise.all([a.exited, b.exited, solo.exited]);
      }
    } finally {
      redis.kill("SIGTERM");
    }
  });
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createNetServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: "127.0.0.1", port }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    });
    if (open) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`nothing listens on port ${port}`);
}

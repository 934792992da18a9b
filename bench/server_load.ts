/**
 * Load on `attention-sinks serve`: requests/s and generated tokens/s with 1, 4 and 8 sessions chatting at
 * once, and the memory a session costs. The server runs as its own process on loopback, as in use.
 *
 *   npm run build && node dist/bench/server_load.js [--model_name_or_path ../shared/models/tinystories-656k]
 *     [--turns 8] [--max_tokens 32] [--concurrency 1,4,8] [--memory_sessions 64]
 *
 * Each session sends `turns` messages one after another (only the new message), each reply at most
 * `max_tokens` tokens (greedy decoding). Memory per session: the saved state the server holds for a session
 * whose cache is full (and writes to the store after every turn), and the growth of the server's RSS over
 * `memory_sessions` such sessions.
 */
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startServer } from "../test/support/server.js";

const { values: flags } = parseArgs({
  options: {
    model_name_or_path: { type: "string", default: "../shared/models/tinystories-656k" },
    turns: { type: "string", default: "8" },
    max_tokens: { type: "string", default: "32" },
    concurrency: { type: "string", default: "1,4,8" },
    memory_sessions: { type: "string", default: "64" },
  },
});
const TURNS = Number(flags.turns);
const MAX_TOKENS = Number(flags.max_tokens);
const LEVELS = flags.concurrency.split(",").map(Number);
const MEMORY_SESSIONS = Number(flags.memory_sessions);
const MESSAGES = ["Tell me a story about a cat.", "What happened next?", "Why was she sad?", "And then?", "How did it end?"];

interface Reply {
  usage: { completion_tokens: number };
  session: { state_bytes: number; kv_cache_bytes: number };
}

async function chat(url: string, session_id: string, content: string): Promise<Reply> {
  const response = await fetch(`${url}/chat/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: "bench", session_id, messages: [{ role: "user", content }], max_tokens: MAX_TOKENS }),
  });
  if (response.status !== 200) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
  return (await response.json()) as Reply;
}

/** The resident memory of a process, from /proc (Linux). */
function rssBytes(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((entry) => entry.startsWith("VmRSS:"))!;
  return Number(/(\d+)/.exec(line)![1]) * 1024;
}

const stateDir = await mkdtemp(join(tmpdir(), "attention-sinks-server-bench-"));
const server = await startServer(["--model_name_or_path", flags.model_name_or_path, "--state_dir", stateDir, "--max_queue", "64"]);
try {
  await chat(server.url, "warm-up", MESSAGES[0]);
  console.log(`model ${flags.model_name_or_path}; ${TURNS} turns per session, replies of at most ${MAX_TOKENS} tokens, greedy\n`);
  console.log("| concurrent sessions | requests | requests/s | generated tokens/s | mean latency (s) |");
  console.log("|---:|---:|---:|---:|---:|");
  for (const level of LEVELS) {
    let tokens = 0;
    let latency = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: level }, async (_, s) => {
        for (let t = 0; t < TURNS; t++) {
          const sent = performance.now();
          const reply = await chat(server.url, `load ${level}-${s}`, MESSAGES[t % MESSAGES.length]);
          latency += (performance.now() - sent) / 1000;
          tokens += reply.usage.completion_tokens;
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const requests = level * TURNS;
    console.log(`| ${level} | ${requests} | ${(requests / seconds).toFixed(1)} | ${(tokens / seconds).toFixed(0)} | ${(latency / requests).toFixed(2)} |`);
  }

  const pid = server.child.pid!;
  const before = rssBytes(pid);
  let last: Reply | null = null;
  // A message longer than the cache, so each session's cache is full: the most memory a session ever holds.
  const long = Array.from({ length: 120 }, (_, i) => MESSAGES[i % MESSAGES.length]).join(" ");
  for (let s = 0; s < MEMORY_SESSIONS; s++) last = await chat(server.url, `memory ${s}`, long);
  const growth = rssBytes(pid) - before;
  console.log(
    `\nmemory per session: saved state ${(last!.session.state_bytes / 1024).toFixed(1)} KiB (KV of a full cache ${(last!.session.kv_cache_bytes / 1024).toFixed(1)} KiB); server RSS grew ${(growth / 2 ** 20).toFixed(1)} MiB over ${MEMORY_SESSIONS} new sessions ` +
      `(${(growth / MEMORY_SESSIONS / 1024).toFixed(0)} KiB each)`,
  );
} finally {
  server.child.kill("SIGTERM");
  await server.exited;
  await rm(stateDir, { recursive: true, force: true });
}

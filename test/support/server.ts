/** `attention-sinks serve` in a child process on a free loopback port, for tests that restart or kill it. */
import { spawn, type ChildProcess } from "node:child_process";
import { CLI } from "./cli.js";

export interface ServerProcess {
  child: ChildProcess;
  /** The API's base URL, `http://127.0.0.1:PORT/v1`. */
  url: string;
  /** Everything the server wrote to stderr so far. */
  stderr(): string;
  /** Resolves with the exit code and signal once the process has ended. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `serve` with `args` (plus `--port 0`) and resolves once it listens. */
export function startServer(args: readonly string[]): Promise<ServerProcess> {
  const child = spawn(process.execPath, [CLI, "serve", "--port", "0", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
      stderr += chunk;
      const url = /listening on (http:\/\/\S+\/v1)/.exec(stderr)?.[1];
      if (url) resolve({ child, url, stderr: () => stderr, exited });
    });
    void exited.then(({ code, signal }) => reject(new Error(`serve exited (${code ?? signal}) before listening:\n${stderr}`)));
  });
}

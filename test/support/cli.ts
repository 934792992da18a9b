/** Runs the `attention-sinks` command line in a child process, as a user would: real stdin, stdout, signals. */
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

export const CLI = fileURLToPath(new URL("../../src/cli/main.js", import.meta.url));

export interface CliRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  /** Written to stdin, which then closes (empty by default). */
  input?: string;
  env?: NodeJS.ProcessEnv;
  /** Sends `signal` (SIGINT by default) once stdout holds this many characters. */
  interrupt?: number;
  signal?: NodeJS.Signals;
  /** Runs alongside the child, for instance to signal it once a file it writes has grown. */
  whileRunning?: (child: ChildProcess) => Promise<void>;
}

export function runCli(args: readonly string[], options: CliOptions = {}): Promise<CliRun> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...options.env }, stdio: "pipe" });
    let stdout = "";
    let stderr = "";
    let signalled = false;
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk;
      if (options.interrupt !== undefined && !signalled && stdout.length >= options.interrupt) {
        signalled = true;
        child.kill(options.signal ?? "SIGINT");
      }
    });
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.on("error", fail);
    child.on("close", (code, signal) => done({ code, signal, stdout, stderr }));
    child.stdin.end(options.input ?? "");
    options.whileRunning?.(child).catch(fail);
  });
}

/** The records of a JSON-lines file's text. */
export function jsonLines(text: string): Record<string, number | string>[] {
  return text
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as Record<string, number | string>);
}

#!/usr/bin/env node
/** The `attention-sinks` command line: a thin layer over the library API. */
import { describeFileError } from "../platform/output_paths.js";
import { readFileSync } from "node:fs";
import { helpText, UsageError, usageLine } from "./args.js";
import type { Command } from "./command.js";
import { COMMANDS } from "./commands/index.js";

/** The version in the package's own package.json (two folders above dist/src/cli). */
function packageVersion(): string {
  const manifest = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string };
  return manifest.version;
}

function overview(): string {
  const width = Math.max(...COMMANDS.map((c) => c.spec.name.length));
  return [
    "usage: attention-sinks <command> [options]",
    "",
    "Endless, constant-memory LLM streaming for transformers.js with attention sinks (StreamingLLM).",
    "",
    "commands:",
    ...COMMANDS.map((c) => `  ${c.spec.name.padEnd(width)}  ${c.spec.summary}`),
    "",
    "Run `attention-sinks <command> --help` (or `attention-sinks help <command>`) for the options of a command;",
    "`attention-sinks --version` prints the version.",
  ].join("\n");
}

export async function main(argv: readonly string[]): Promise<number> {
  const [first, ...others] = argv;
  if (first === "--version" || first === "-V") {
    process.stdout.write(`attention-sinks ${packageVersion()}\n`);
    return 0;
  }
  // `help generate` is `generate --help`.
  const [name, rest] = first === "help" && others.length > 0 ? [others[0], ["--help"]] : [first, others];
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(overview() + "\n");
    return name === undefined ? 2 : 0;
  }
  const command: Command | undefined = COMMANDS.find((c) => c.spec.name === name);
  if (!command) {
    process.stderr.write(`attention-sinks: unknown command "${name}"\n\n${overview()}\n`);
    return 2;
  }
  try {
    const code = await command.execute(rest);
    if (code !== "help") return code;
    process.stdout.write(helpText(command.spec) + "\n");
    return 0;
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`attention-sinks ${name}: ${error.message}\n${usageLine(command.spec)}\nRun \`attention-sinks ${name} --help\` for details.\n`);
      return 2;
    }
    process.stderr.write(`attention-sinks ${name}: ${describeFileError(error) ?? (error as Error).message}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));

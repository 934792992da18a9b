/** The shape of a CLI command: its declared flags and what it runs. */
import type { CommandSpec, ParsedArgs } from "./args.js";

export interface Command {
  spec: CommandSpec;
  /** Runs the command; resolves to the process exit code. */
  run(args: ParsedArgs): Promise<number>;
}

/** The shape of a CLI command: its declared flags and what it runs with them, typed from the declaration. */
import { parseCommandLine, type CommandSpec, type FlagSpecs, type ParsedArgs } from "./args.js";

export interface Command {
  readonly spec: CommandSpec;
  /** Parses `argv` against the spec and runs: the process exit code, or "help" when --help was asked. */
  execute(argv: readonly string[]): Promise<number | "help">;
}

export function defineCommand<S extends FlagSpecs>(spec: CommandSpec<S>, run: (args: ParsedArgs<S>) => Promise<number>): Command {
  return {
    spec,
    async execute(argv) {
      const args = parseCommandLine(spec, argv);
      return args.help ? "help" : run(args);
    },
  };
}

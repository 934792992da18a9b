/**
 * Command-line flags as data: each command declares its flags once, and parsing, validation and `--help`
 * all come from that declaration. Flags use the seed's snake_case names (`--num_tokens 8192`).
 */
import { parseArgs } from "node:util";

/** `list`: values after the flag, split at spaces and commas (`--features a b`); `strings`: one value per use of the flag. */
export type FlagType = "string" | "integer" | "number" | "boolean" | "list" | "strings";

export interface FlagSpec {
  type: FlagType;
  description: string;
  default?: string | number | boolean | readonly string[];
  /** Allowed values (strings and list items). */
  choices?: readonly string[];
  /** Smallest allowed value (integers and numbers). */
  min?: number;
  max?: number;
  /** Placeholder in --help, e.g. FILE. */
  metavar?: string;
}

export type FlagSpecs = Readonly<Record<string, FlagSpec>>;

/** The value a flag parses to: its choices' union where it has choices. */
type FlagValueOf<F extends FlagSpec> = F["type"] extends "boolean"
  ? boolean
  : F["type"] extends "integer" | "number"
    ? number
    : F["type"] extends "list" | "strings"
      ? F["choices"] extends readonly (infer C)[]
        ? C[]
        : string[]
      : F["choices"] extends readonly (infer C)[]
        ? C
        : string;

/** Parsed flags, typed from their spec: a flag without a default may be absent (booleans default to false). */
export type FlagValues<S extends FlagSpecs> = {
  readonly [K in keyof S]: S[K] extends { type: "boolean" } | { default: unknown } ? FlagValueOf<S[K]> : FlagValueOf<S[K]> | undefined;
};

/** Declares flags, keeping their literal types (choices, defaults) for {@link FlagValues}. */
export function flags<const S extends FlagSpecs>(specs: S): S {
  return specs;
}

export interface CommandSpec<S extends FlagSpecs = FlagSpecs> {
  name: string;
  summary: string;
  /** Positional arguments, by name, in order. */
  positionals?: readonly { name: string; description: string; optional?: boolean }[];
  flags: S;
  examples?: readonly string[];
}

/** A wrong flag or value: the CLI prints the message and the usage line, and exits with code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

export interface ParsedArgs<S extends FlagSpecs = FlagSpecs> {
  flags: FlagValues<S>;
  positionals: string[];
  help: boolean;
}

type RawValue = string | number | boolean | readonly string[] | undefined;

export function parseCommandLine<S extends FlagSpecs>(spec: CommandSpec<S>, argv: readonly string[]): ParsedArgs<S> {
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean; short?: string }> = { help: { type: "boolean", short: "h" } };
  for (const [name, flag] of Object.entries(spec.flags)) {
    options[name] = flag.type === "boolean" ? { type: "boolean" } : { type: "string", multiple: flag.type === "list" || flag.type === "strings" };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: joinListValues(spec, normalizeFlags(spec, argv)), options, allowPositionals: true, strict: true });
  } catch (error) {
    const message = (error as Error).message;
    const unknown = /Unknown option '--?([^']+)'/.exec(message)?.[1];
    if (unknown !== undefined) {
      const guess = closestFlag(unknown, Object.keys(spec.flags));
      throw new UsageError(`unknown option '--${unknown}'${guess ? `; did you mean --${guess}?` : ""}`);
    }
    throw new UsageError(message.replace(/\. To specify.*$/s, ""));
  }
  if (parsed.values.help) return { flags: {} as FlagValues<S>, positionals: parsed.positionals, help: true };
  const required = (spec.positionals ?? []).filter((p) => !p.optional).length;
  const allowed = spec.positionals?.length ?? 0;
  if (parsed.positionals.length < required || parsed.positionals.length > allowed) {
    const names = (spec.positionals ?? []).map((p) => (p.optional ? `[${p.name}]` : p.name)).join(" ");
    throw new UsageError(`expected ${names || "no positional arguments"}, got ${parsed.positionals.length ? parsed.positionals.join(" ") : "none"}`);
  }
  const values: Record<string, RawValue> = {};
  for (const [name, flag] of Object.entries(spec.flags)) {
    const raw = (parsed.values as Record<string, string | boolean | string[] | undefined>)[name];
    values[name] = raw === undefined ? (flag.default ?? (flag.type === "boolean" ? false : undefined)) : convert(name, flag, raw);
  }
  // Each value was converted by its own spec above, which is what FlagValues<S> describes.
  return { flags: values as FlagValues<S>, positionals: parsed.positionals, help: false };
}

/**
 * Kebab-case spellings of the snake_case flags (`--max-new-tokens`) become the documented names, and a
 * negative number after a flag that takes a value (`--attention_sink_size -1`) is that flag's value.
 */
function normalizeFlags(spec: CommandSpec<FlagSpecs>, argv: readonly string[]): string[] {
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      args.push(...argv.slice(i));
      break;
    }
    const match = /^--([^=]+)(=.*)?$/s.exec(arg);
    if (!match) {
      args.push(arg);
      continue;
    }
    const name = match[1].replaceAll("-", "_") in spec.flags ? match[1].replaceAll("-", "_") : match[1];
    const flag = spec.flags[name];
    if (match[2] === undefined && flag && flag.type !== "boolean" && flag.type !== "list" && /^-\d|^-\.\d/.test(argv[i + 1] ?? "")) {
      args.push(`--${name}=${argv[++i]}`);
    } else {
      args.push(`--${name}${match[2] ?? ""}`);
    }
  }
  return args;
}

/** The declared flag nearest to a misspelt one (at most a third of its letters off), if any. */
function closestFlag(name: string, names: readonly string[]): string | undefined {
  const distance = (a: string, b: string) => {
    const row = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      let diagonal = row[0];
      row[0] = i;
      for (let j = 1; j <= b.length; j++) {
        const above = row[j];
        row[j] = Math.min(row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
        diagonal = above;
      }
    }
    return row[b.length];
  };
  let best: { name: string; distance: number } | undefined;
  for (const candidate of names) {
    const d = distance(name, candidate);
    if (d <= Math.max(1, Math.floor(candidate.length / 3)) && (!best || d < best.distance)) best = { name: candidate, distance: d };
  }
  return best?.name;
}

/** `--features a b c` (the seed's space-separated lists) becomes `--features=a,b,c`. */
function joinListValues(spec: CommandSpec<FlagSpecs>, argv: readonly string[]): string[] {
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].startsWith("--") && !argv[i].includes("=") ? argv[i].slice(2) : undefined;
    if (name === undefined || spec.flags[name]?.type !== "list") {
      args.push(argv[i]);
      continue;
    }
    const values: string[] = [];
    while (i + 1 < argv.length && !argv[i + 1].startsWith("-")) values.push(argv[++i]);
    args.push(values.length ? `--${name}=${values.join(",")}` : argv[i]);
  }
  return args;
}

function convert(name: string, flag: FlagSpec, raw: string | boolean | string[]): RawValue {
  if (flag.type === "boolean") return raw as boolean;
  if (flag.type === "strings") {
    for (const item of raw as string[]) checkChoice(name, flag, item);
    return raw as string[];
  }
  if (flag.type === "list") {
    const items = (raw as string[]).flatMap((item) => item.split(/[\s,]+/)).filter(Boolean);
    for (const item of items) checkChoice(name, flag, item);
    return items;
  }
  const text = raw as string;
  if (flag.type === "string") {
    checkChoice(name, flag, text);
    return text;
  }
  const value = Number(text);
  // Decimal only: Number() would also read "0x10" as 16 and "" as 0.
  const decimal = /^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$/.test(text);
  if (!decimal || !Number.isFinite(value) || (flag.type === "integer" && !Number.isInteger(value))) {
    throw new UsageError(`--${name} must be ${flag.type === "integer" ? "an integer" : "a number"}, got "${text}"`);
  }
  if (flag.min !== undefined && value < flag.min) throw new UsageError(`--${name} must be at least ${flag.min}, got ${value}`);
  if (flag.max !== undefined && value > flag.max) throw new UsageError(`--${name} must be at most ${flag.max}, got ${value}`);
  return value;
}

function checkChoice(name: string, flag: FlagSpec, value: string): void {
  if (flag.choices && !flag.choices.includes(value)) {
    throw new UsageError(`--${name} must be one of ${flag.choices.join(", ")}; got "${value}"`);
  }
}

export function usageLine(spec: CommandSpec<FlagSpecs>): string {
  const positionals = (spec.positionals ?? []).map((p) => (p.optional ? ` [${p.name}]` : ` ${p.name}`)).join("");
  return `usage: attention-sinks ${spec.name}${positionals} [options]`;
}

export function helpText(spec: CommandSpec<FlagSpecs>): string {
  const lines = [usageLine(spec), "", spec.summary, ""];
  if (spec.positionals?.length) {
    lines.push("arguments:");
    for (const p of spec.positionals) lines.push(`  ${p.name.padEnd(28)} ${p.description}`);
    lines.push("");
  }
  lines.push("options:");
  const entries: [string, FlagSpec][] = [...Object.entries(spec.flags), ["help", { type: "boolean", description: "show this help and exit" }]];
  for (const [name, flag] of entries) {
    const metavar = flag.type === "boolean" ? "" : ` ${flag.metavar ?? (flag.choices ? `{${flag.choices.join(",")}}` : flag.type === "list" ? "VALUE..." : name.toUpperCase())}`;
    const left = `  --${name}${metavar}`;
    const extra = flag.default !== undefined && flag.default !== false ? ` (default: ${Array.isArray(flag.default) ? flag.default.join(" ") : flag.default})` : "";
    lines.push(left.length > 30 ? `${left}\n${" ".repeat(31)}${flag.description}${extra}` : `${left.padEnd(31)}${flag.description}${extra}`);
  }
  if (spec.examples?.length) {
    lines.push("", "examples:");
    for (const example of spec.examples) lines.push(`  ${example}`);
  }
  return lines.join("\n");
}

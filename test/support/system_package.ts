/**
 * Programs from a Debian package that a test suite needs (redis-server, say). `.ci/run` installs them with
 * apt; elsewhere a suite whose program is missing is skipped with a notice naming the install command, and
 * under CI (`process.env.CI` set) a missing program is a failure.
 */
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";
import type { TestContext } from "node:test";

/** The program's path in PATH, or undefined when it is missing (then `t` fails under CI, else is skipped). */
export function systemProgram(t: TestContext, program: string, debianPackage: string): string | undefined {
  for (const dir of [...(process.env.PATH ?? "").split(delimiter), "/usr/sbin", "/usr/bin"]) {
    const path = join(dir, program);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // not in this folder
    }
  }
  const message = `${program} is not installed: apt-get install ${debianPackage}`;
  if (process.env.CI) throw new Error(`${message} (.ci/run installs it; CI must have it)`);
  t.skip(message);
  return undefined;
}

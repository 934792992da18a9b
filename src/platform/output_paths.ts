/**
 * Where the package writes (CSV and plot folders, generated text, the conversion cache): checked, and made,
 * before any work starts, so a wrong path is reported by name with what is wrong with it, not as a raw errno.
 */
import { accessSync, constants, existsSync, mkdirSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";

export class OutputPathError extends Error {
  override name = "OutputPathError";

  constructor(
    readonly path: string,
    problem: string,
  ) {
    super(`${path}: ${problem}`);
  }
}

/**
 * Says why `dir` cannot be a folder to write into (it is a file, sits under one, or is not writable), if so;
 * `role` names what the folder is for, when the path alone would not tell the user (`the conversion cache`).
 */
export function checkDirectory(dir: string, role?: string): void {
  const problem = directoryProblem(dir);
  if (problem !== null) throw new OutputPathError(dir, role === undefined ? problem : `${role}: ${problem}`);
}

/** Makes `dir` (and its parents) a folder to write into, or says why it cannot be one. */
export function ensureDirectory(dir: string, role?: string): void {
  checkDirectory(dir, role);
  mkdirSync(dir, { recursive: true });
}

/** Makes sure a file or folder can be created at `path`: its folder exists (made if needed) and is writable. */
export function ensureParentDirectory(path: string): void {
  const parent = dirname(resolve(path));
  const problem = directoryProblem(parent);
  if (problem !== null) throw new OutputPathError(path, `cannot be written: ${parent} ${problem}`);
  mkdirSync(parent, { recursive: true });
}

/** Makes sure a file can be written at `file`: its folder exists (made if needed) and `file` is not a folder. */
export function ensureFileTarget(file: string): void {
  if (existsSync(file) && statSync(file).isDirectory()) throw new OutputPathError(file, "is a folder; give a file name");
  ensureParentDirectory(file);
}

function directoryProblem(dir: string): string | null {
  if (existsSync(dir)) {
    if (!statSync(dir).isDirectory()) return "is a file, not a folder; give a folder (or a new name) instead";
    return writable(dir) ? null : "is not writable by this user";
  }
  const blocker = nearestExisting(dir);
  if (!statSync(blocker).isDirectory()) return `cannot be made: ${blocker} is a file, not a folder`;
  return writable(blocker) ? null : `cannot be made: ${blocker} is not writable by this user`;
}

/** The message for a file-system error the package did not foresee, naming the path; null for other errors. */
export function describeFileError(error: unknown): string | null {
  const { code, path } = error as NodeJS.ErrnoException;
  if (typeof code !== "string" || typeof path !== "string") return null;
  const problems: Record<string, string> = {
    EACCES: "permission denied",
    EPERM: "not permitted",
    EEXIST: "already exists",
    EISDIR: "is a folder, where a file was expected",
    ENOTDIR: "a part of this path is a file, not a folder",
    ENOENT: "does not exist",
    ENOSPC: "no space left on the device",
    EROFS: "is on a read-only file system",
  };
  const problem = problems[code];
  return problem === undefined ? null : `${path}: ${problem}`;
}

function nearestExisting(path: string): string {
  let current = resolve(path);
  while (!existsSync(current)) current = dirname(current);
  return current;
}

function writable(folder: string): boolean {
  try {
    accessSync(folder, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

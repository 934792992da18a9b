/**
 * Packages that only some features need (the plot, parquet datasets, the llama.cpp backend). They are optional peer dependencies,
 * so a library install does not carry them; the features check for them first and say what to install.
 */
import { createRequire } from "node:module";

/** Each optional package and the exact version the package is tested with (package.json's peers). */
export const OPTIONAL_DEPENDENCIES = {
  "@resvg/resvg-js": "2.6.2",
  "dejavu-fonts-ttf": "2.37.3",
  hyparquet: "1.31.5",
  "node-llama-cpp": "3.21.1",
  vega: "6.4.0",
  "vega-lite": "6.4.3",
} as const;

export type OptionalDependency = keyof typeof OPTIONAL_DEPENDENCIES;

export class MissingDependencyError extends Error {
  override name = "MissingDependencyError";
}

/** Throws, naming the install command, unless every one of `packages` is installed. */
export function requireOptionalDependencies(feature: string, packages: readonly OptionalDependency[]): void {
  const missing = packages.filter((name) => !isInstalled(name));
  if (missing.length === 0) return;
  const specs = missing.map((name) => `${name}@${OPTIONAL_DEPENDENCIES[name]}`).join(" ");
  throw new MissingDependencyError(
    `${feature} needs ${missing.join(", ")}, which a plain install of attention-sinks leaves out; install ${missing.length === 1 ? "it" : "them"} with: npm install -E ${specs}`,
  );
}

function isInstalled(name: OptionalDependency): boolean {
  try {
    createRequire(import.meta.url).resolve(`${name}/package.json`);
    return true;
  } catch (error) {
    // A package whose exports hide package.json is installed all the same.
    return (error as NodeJS.ErrnoException).code === "ERR_PACKAGE_PATH_NOT_EXPORTED";
  }
}

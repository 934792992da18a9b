/**
 * The layout's rules, checked on the sources: folders of src/ import each other without cycles, nothing in
 * the library imports the CLI, generation does not import the perplexity benchmark, and the published
 * tarball holds the library only (no test fixtures or oracle).
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const SRC = join(ROOT, "src");

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? sourceFiles(join(dir, entry.name)) : entry.name.endsWith(".ts") ? [join(dir, entry.name)] : [],
  );
}

/** The folder of src/ a file belongs to ("." for the files at its top). */
function folderOf(file: string): string {
  const parts = relative(SRC, file).split("/");
  return parts.length === 1 ? "." : parts[0];
}

/** Folder -> the folders its files import (relative imports only). */
function folderGraph(): Map<string, Set<string>> {
  const graph = new Map<string, Set<string>>();
  for (const file of sourceFiles(SRC)) {
    const from = folderOf(file);
    const targets = graph.get(from) ?? new Set<string>();
    graph.set(from, targets);
    for (const [, specifier] of readFileSync(file, "utf8").matchAll(/^(?:import|export)[^;]*?from\s+"(\.[^"]+)"/gms)) {
      const target = resolve(dirname(file), specifier.replace(/\.js$/, ".ts"));
      assert.ok(target.startsWith(SRC + "/"), `${relative(ROOT, file)} imports ${specifier}, outside src/`);
      const to = folderOf(target);
      if (to !== from) targets.add(to);
    }
  }
  return graph;
}

function findCycle(graph: Map<string, Set<string>>): string[] | null {
  const state = new Map<string, "visiting" | "done">();
  const path: string[] = [];
  const visit = (node: string): string[] | null => {
    if (state.get(node) === "done") return null;
    if (state.get(node) === "visiting") return [...path.slice(path.indexOf(node)), node];
    state.set(node, "visiting");
    path.push(node);
    for (const next of graph.get(node) ?? []) {
      const cycle = visit(next);
      if (cycle) return cycle;
    }
    path.pop();
    state.set(node, "done");
    return null;
  };
  for (const node of graph.keys()) {
    const cycle = visit(node);
    if (cycle) return cycle;
  }
  return null;
}

describe("architecture", () => {
  const graph = folderGraph();

  it("the folders of src/ import each other without a cycle", () => {
    assert.ok(graph.size >= 10, `found only ${graph.size} folders`);
    assert.equal(findCycle(graph)?.join(" -> ") ?? null, null);
  });

  it("the library never imports the CLI, and generation never imports the perplexity benchmark", () => {
    for (const [folder, targets] of graph) {
      if (folder !== "cli") assert.ok(!targets.has("cli"), `src/${folder} imports src/cli`);
    }
    assert.ok(graph.has("generation") && !graph.get("generation")!.has("perplexity"), "src/generation imports src/perplexity");
  });

});

/**
 * node-llama-cpp for tests: the llama.cpp tests run where it is installed, are skipped with the install
 * command elsewhere, and fail under CI, whose `npm ci` installs it.
 */
import { fileURLToPath } from "node:url";
import type { TestContext } from "node:test";
import { importNodeLlamaCpp, LlamaCppUnavailableError, NODE_LLAMA_CPP_VERSION } from "../../src/llama_cpp/bindings.js";

const INSTALL = `npm install node-llama-cpp@${NODE_LLAMA_CPP_VERSION}`;

/** A module for `node --import` that makes node-llama-cpp unresolvable (see without_node_llama_cpp.ts). */
export const WITHOUT_NODE_LLAMA_CPP = fileURLToPath(new URL("./without_node_llama_cpp.js", import.meta.url));

/** Whether node-llama-cpp loads; skips `t` without it (fails it under CI). */
export async function requireLlamaCpp(t: TestContext): Promise<boolean> {
  try {
    await importNodeLlamaCpp();
    return true;
  } catch (error) {
    if (!(error instanceof LlamaCppUnavailableError)) throw error;
    if (process.env.CI) throw new Error(`node-llama-cpp is missing; CI installs it with npm ci (${INSTALL})`, { cause: error });
    t.skip(`node-llama-cpp is not installed (${INSTALL})`);
    return false;
  }
}

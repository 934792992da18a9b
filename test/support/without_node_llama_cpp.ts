/**
 * Loaded with `node --import`: node-llama-cpp cannot be resolved, and importing it fails with the error Node
 * gives when a package is not installed, as on an install without the optional dependency.
 */
import { register } from "node:module";

const hook = `
export async function resolve(specifier, context, next) {
  if (specifier === "node-llama-cpp" || specifier.startsWith("node-llama-cpp/")) {
    const error = new Error("Cannot find package 'node-llama-cpp' imported from " + context.parentURL);
    error.code = "ERR_MODULE_NOT_FOUND";
    throw error;
  }
  return next(specifier, context);
}`;
register(`data:text/javascript,${encodeURIComponent(hook)}`);

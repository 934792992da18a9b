/** The demo as a site: its page, its two bundles (built from dist/demo by esbuild) and onnxruntime-web's files. */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { bundle, ORT_FOLDER, type Site } from "../test/support/browser/site.js";
import { repositoryRoot } from "../test/support/shared_data.js";

export async function demoSite(): Promise<Site> {
  const root = repositoryRoot();
  const javascript = "text/javascript; charset=utf-8";
  return {
    folders: ORT_FOLDER,
    files: {
      "/": { type: "text/html; charset=utf-8", body: await readFile(join(root, "demo", "index.html"), "utf8") },
      "/main.js": { type: javascript, body: await bundle("dist/demo/main.js") },
      "/worker.js": { type: javascript, body: await bundle("dist/demo/worker.js") },
    },
  };
}

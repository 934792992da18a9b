/**
 * A site on 127.0.0.1 for the browser suites, the browser benchmark and the demo: pages, esbuild bundles,
 * onnxruntime-web's wasm files and model folders, every request logged.
 *
 * The server is also the browser's proxy (see chromium.ts): Chromium sends loopback requests straight to it and
 * any other request through it as a proxy request, which it records in {@link SiteServer.outside} and refuses.
 */
import { createReadStream, existsSync, statSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { extname, join, normalize, sep } from "node:path";
import { build } from "esbuild";
import { repositoryRoot } from "../shared_data.js";

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".wasm": "application/wasm",
  ".json": "application/json",
  ".txt": "text/plain; charset=utf-8",
};

/** What the server answers: a URL path prefix mapped to a folder, or a path mapped to content. */
export interface Site {
  folders?: Readonly<Record<string, string>>;
  files?: Readonly<Record<string, { type: string; body: string | Uint8Array }>>;
}

/** onnxruntime-web's `.wasm` and `.mjs` files, for `env.backends.onnx.wasm.wasmPaths = "/ort/"`. */
export const ORT_FOLDER = { "/ort/": join(repositoryRoot(), "node_modules", "onnxruntime-web", "dist") };

/** Bundles a compiled script of this repository for the browser, as an application's bundler would. */
export async function bundle(entry: string): Promise<string> {
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    logLevel: "silent",
    absWorkingDir: repositoryRoot(),
  });
  return result.outputFiles[0].text;
}

export interface SiteServer {
  /** http://127.0.0.1:PORT */
  origin: string;
  /** Every request the server answered (paths), in order. */
  served: string[];
  /** Every request that tried to leave 127.0.0.1 through it as a proxy (URLs or CONNECT hosts). */
  outside: string[];
  close(): Promise<void>;
}

/** Serves a site on 127.0.0.1 (any free port unless `port` is given), logging every request. */
export async function startSite(site: Site, port = 0): Promise<SiteServer> {
  const served: string[] = [];
  const outside: string[] = [];
  const server = createServer((request, response) => answer(site, request, response, served, outside));
  server.on("connect", (request, socket) => {
    outside.push(`CONNECT ${request.url}`);
    socket.end("HTTP/1.1 403 Forbidden\r\n\r\n");
  });
  await new Promise<void>((resolve, reject) => server.once("error", reject).listen(port, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const close = async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return { origin, served, outside, close };
}

function answer(site: Site, request: IncomingMessage, response: ServerResponse, served: string[], outside: string[]): void {
  const target = request.url ?? "/";
  // A proxy request names an absolute URL: the browser tried to reach another host.
  if (!target.startsWith("/")) {
    outside.push(`${request.method} ${target}`);
    response.writeHead(403).end();
    return;
  }
  const path = decodeURIComponent(new URL(target, "http://127.0.0.1").pathname);
  served.push(path);
  // Cross-origin isolation lets onnxruntime-web run its wasm on several threads, as a deployed page would.
  const headers = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp", "Cache-Control": "no-store" };
  const file = site.files?.[path];
  if (file) {
    response.writeHead(200, { ...headers, "Content-Type": file.type }).end(file.body);
    return;
  }
  for (const [prefix, folder] of Object.entries(site.folders ?? {})) {
    if (!path.startsWith(prefix)) continue;
    const local = normalize(join(folder, path.slice(prefix.length)));
    if (!local.startsWith(normalize(folder) + sep) || !existsSync(local) || !statSync(local).isFile()) break;
    response.writeHead(200, { ...headers, "Content-Type": CONTENT_TYPES[extname(local)] ?? "application/octet-stream", "Content-Length": statSync(local).size });
    createReadStream(local).pipe(response);
    return;
  }
  response.writeHead(404, headers).end();
}

/** A page that runs one module script. */
export function modulePage(script: string): string {
  return `<!doctype html><html><head><meta charset="utf-8"><title>attention-sinks</title></head><body><script type="module" src="${script}"></script></body></html>`;
}

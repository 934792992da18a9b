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
import { build as viteBuild } from "vite";
import webpack from "webpack";
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

/** The bundlers a browser app builds the page script with, each writing `page.js` and its assets into a folder. */
export const APP_BUNDLERS = {
  /** Vite's production build (Rollup), the script as its entry. */
  async vite(entry: string, dir: string): Promise<void> {
    const root = repositoryRoot();
    await viteBuild({
      configFile: false,
      logLevel: "silent",
      root,
      build: { outDir: dir, emptyOutDir: true, minify: false, target: "es2022", rollupOptions: { input: join(root, entry), output: { entryFileNames: "page.js" } } },
    });
  },
  /** webpack 5 in production mode for the web, as an ES module. */
  async webpack(entry: string, dir: string): Promise<void> {
    const compiler = webpack({
      mode: "production",
      context: repositoryRoot(),
      entry: join(repositoryRoot(), entry),
      target: "web",
      devtool: false,
      output: { path: dir, filename: "page.js", module: true, chunkFormat: "module" },
      experiments: { outputModule: true },
      optimization: { minimize: false, splitChunks: false },
      performance: { hints: false },
    });
    const stats = await new Promise<webpack.Stats>((resolve, reject) => compiler.run((error, result) => (error || !result ? reject(error) : resolve(result))));
    await new Promise<void>((resolve) => compiler.close(() => resolve()));
    if (stats.hasErrors()) throw new Error(`webpack: ${stats.toString({ all: false, errors: true })}`);
  },
} as const;

/**
 * Headless Chromium on a page served from 127.0.0.1, for the browser suites and the browser benchmark.
 *
 * The server serves the page, its esbuild bundle, onnxruntime-web's wasm files and model folders, and logs
 * every request. It is also the browser's proxy: Chromium sends loopback requests straight to it and any
 * other request through it as a proxy request, which it records and refuses. So a request that would leave
 * 127.0.0.1 (from the page, a worker or the browser itself) shows up in {@link BrowserPage.outside}.
 */
import { createReadStream, existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { extname, join, normalize, sep } from "node:path";
import { build } from "esbuild";
import { launch, type Browser, type Page } from "puppeteer-core";
import { repositoryRoot } from "../shared_data.js";

/** The Debian package the suites drive, pinned as `.ci/run` installs it. */
export const CHROMIUM_PACKAGE = "chromium=150.0.7871.100-1~deb12u1";

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".wasm": "application/wasm",
  ".json": "application/json",
  ".txt": "text/plain; charset=utf-8",
};

/** A port nothing listens on: the browser's Google services are pointed at it. */
const NOWHERE = "http://127.0.0.1:9";

/**
 * Chromium's own services that reach Google at startup, off. Without the last ones this Chromium still
 * asked clients2.google.com for the time, accounts.google.com for signed-in accounts, android.clients.google.com
 * for a GCM check-in and preconnected to www.google.com, all seen through the proxy below.
 */
const OFFLINE_FLAGS = [
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-features=NetworkTimeServiceQuerying,PreconnectToSearch,NetworkPrediction,SearchPrefetchServicePrefetching,AutofillServerCommunication",
  "--dns-prefetch-disable",
  ...["gaia-url", "google-base-url", "gcm-checkin-url", "gcm-registration-url", "gcm-mcs-endpoint"].map((flag) => `--${flag}=${NOWHERE}`),
];

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

export interface BrowserPage {
  page: Page;
  /** The page's origin, http://127.0.0.1:PORT. */
  origin: string;
  /** Every request the server answered (paths), in order. */
  served: string[];
  /** Every request that tried to leave 127.0.0.1 (URLs or CONNECT hosts). */
  outside: string[];
  /** What the page printed to its console and its uncaught errors, for failure messages. */
  console: string[];
  close(): Promise<void>;
}

export interface OpenOptions {
  chromium: string;
  site: Site;
  /** The path to open (default /). */
  path?: string;
  /** WebGPU through `--enable-unsafe-webgpu` (a software adapter without a GPU); otherwise the GPU is off. */
  webgpu?: boolean;
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

/** Starts the server and Chromium, and opens the page. */
export async function openPage(options: OpenOptions): Promise<BrowserPage> {
  const site = await startSite(options.site);
  const profile = mkdtempSync(join(tmpdir(), "attention-sinks-chromium-"));
  let browser: Browser | undefined;
  const closeAll = async () => {
    await browser?.close();
    await site.close();
    rmSync(profile, { recursive: true, force: true });
  };
  try {
    browser = await launch({
      executablePath: options.chromium,
      headless: true,
      pipe: true,
      userDataDir: profile,
      args: ["--headless=new", "--no-sandbox", ...(options.webgpu ? ["--enable-unsafe-webgpu"] : ["--disable-gpu"]), ...OFFLINE_FLAGS, `--proxy-server=${site.origin}`],
    });
    const page = await browser.newPage();
    const printed: string[] = [];
    page.on("console", (message) => printed.push(`${message.type()}: ${message.text()}`));
    page.on("pageerror", (error) => printed.push(`pageerror: ${String(error)}`));
    await page.goto(`${site.origin}${options.path ?? "/"}`, { waitUntil: "load" });
    return { page, origin: site.origin, served: site.served, outside: site.outside, console: printed, close: closeAll };
  } catch (error) {
    await closeAll();
    throw error;
  }
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

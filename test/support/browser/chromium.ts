/**
 * Headless Chromium on a page of a {@link Site}, for the browser suites and the browser benchmark. The site's
 * server is the browser's proxy, so a request that would leave 127.0.0.1 (from the page, a worker or the
 * browser itself) shows up in {@link BrowserPage.outside}.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launch, type Browser, type Page } from "puppeteer-core";
import { startSite, type Site } from "./site.js";

/** The Debian package the suites drive, pinned as `.ci/run` installs it. */
export const CHROMIUM_PACKAGE = "chromium=150.0.7871.100-1~deb12u1";

/** A port nothing listens on: the browser's Google services are pointed at it. */
const NOWHERE = "http://127.0.0.1:9";

/**
 * Chromium's own services that reach Google, off. With only the first five this Chromium still asked
 * clients2.google.com for the time, accounts.google.com for signed-in accounts, android.clients.google.com for a
 * GCM check-in, content-autofill.googleapis.com about the page's inputs, and preconnected to www.google.com, all
 * seen through the site's proxy.
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


/**
 * Serves the demo on 127.0.0.1 (`npm run demo [-- --port 8080]`): open the address it prints in a browser
 * and pick a model folder.
 */
import { parseArgs } from "node:util";
import { startSite } from "../test/support/browser/site.js";
import { demoSite } from "./site.js";

const { values } = parseArgs({ options: { port: { type: "string", default: "8080" } } });
const site = await startSite(await demoSite(), Number(values.port));
console.log(`attention-sinks demo on ${site.origin}/ (Ctrl-C stops it)`);

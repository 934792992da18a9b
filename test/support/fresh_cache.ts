/**
 * Loaded before every test file (`node --import`): the tests convert checkpoints into a fresh conversion
 * cache of their own, never into one an older build filled, and it is removed when the run ends.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const OWNER = "ATTENTION_SINKS_TEST_CACHE";
if (!process.env[OWNER]) {
  const dir = mkdtempSync(join(tmpdir(), "attention-sinks-test-cache-"));
  process.env[OWNER] = dir;
  process.env.ATTENTION_SINKS_CACHE = dir;
  process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
}

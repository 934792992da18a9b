/** The queue in front of a model: one job at a time, round-robin across lanes, bounded, abortable while waiting. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { FairQueue } from "../src/server/fair_queue.js";
import { ApiError } from "../src/server/openai_api.js";

describe("FairQueue", () => {
  it("takes lanes in turn, so a lane with many jobs does not hold back one that arrives later", async () => {
    const queue = new FairQueue(16);
    const order: string[] = [];
    const job = (name: string) => async () => {
      order.push(`${name} start`);
      await new Promise((resolve) => setTimeout(resolve, 2));
      order.push(`${name} end`);
      return name;
    };
    const busy = ["a1", "a2", "a3", "a4"].map((name) => queue.submit("a", job(name)));
    const late = queue.submit("b", job("b1"));
    const results = await Promise.all([...busy, late]);
    assert.deepEqual(results, ["a1", "a2", "a3", "a4", "b1"]);
    const starts = order.filter((entry) => entry.endsWith("start")).map((entry) => entry.split(" ")[0]);
    assert.deepEqual(starts, ["a1", "a2", "b1", "a3", "a4"], "b's job runs after a's second, not its fourth");
    for (let i = 0; i < order.length; i += 2) assert.equal(order[i].split(" ")[0], order[i + 1].split(" ")[0], "one job at a time");
    await queue.idle();
  });

  it("refuses a job when full with a 429 and Retry-After, and drops an aborted job before it runs", async () => {
    const queue = new FairQueue(1);
    let release = () => {};
    const running = queue.submit("a", () => new Promise<void>((resolve) => (release = resolve)));
    const ran: string[] = [];
    const abort = new AbortController();
    const waiting = queue.submit("b", async () => void ran.push("b"), abort.signal);
    await assert.rejects(queue.submit("c", async () => void ran.push("c")), (error: unknown) => {
      assert.ok(error instanceof ApiError);
      assert.equal(error.status, 429);
      assert.match(error.headers["Retry-After"], /^\d+$/);
      return true;
    });
    abort.abort(new Error("client left"));
    await assert.rejects(waiting, /client left/);
    // Its place is free again.
    const next = queue.submit("d", async () => void ran.push("d"));
    release();
    await Promise.all([running, next]);
    assert.deepEqual(ran, ["d"]);
  });
});

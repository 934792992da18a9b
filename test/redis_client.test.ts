/** The package's minimal Redis client against a real redis-server: binary-safe values, pipelining, errors, and the store on top. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { RedisClient, RedisError } from "../src/server/redis_client.js";
import { RedisStore, parseRedisUrl, sessionKey } from "../src/server/session_store.js";
import { startRedis } from "./support/redis.js";

describe("RedisClient", () => {
  it("round-trips binary values of any size, pipelines commands in order, and reports error replies", async (t) => {
    const redis = await startRedis(t);
    if (!redis) return;
    const client = await RedisClient.connect("127.0.0.1", redis.port);
    try {
      assert.equal(await client.command("PING"), "PONG");
      assert.equal(await client.command("GET", "missing"), null);
      // Every byte value, CR LF included, and a value far larger than one TCP read.
      const big = randomBytes(8 * 2 ** 20);
      big.set(Buffer.from("\r\n$-1\r\n*3\r\n"), 1000);
      assert.equal(await client.command("SET", "big", big), "OK");
      const replies = await Promise.all([client.command("GET", "big"), client.command("SET", "small", "x"), client.command("GET", "small"), client.command("DEL", "small", "missing")]);
      assert.ok(Buffer.from(replies[0] as Uint8Array).equals(big), "the 8 MiB value comes back byte for byte");
      assert.deepEqual(replies.slice(1), ["OK", new Uint8Array(Buffer.from("x")), 1]);
      await assert.rejects(client.command("NOSUCHCOMMAND"), (error: unknown) => error instanceof RedisError && /unknown command/i.test(error.message));
      assert.equal(await client.command("PING"), "PONG", "the connection goes on after an error reply");
      assert.deepEqual(await client.command("KEYS", "s*"), []);
    } finally {
      await client.close();
      redis.stop();
    }
  });

  it("the store keys sessions by hash, and refuses URLs it cannot use", async (t) => {
    assert.deepEqual(parseRedisUrl("redis://10.0.0.5:6380"), { host: "10.0.0.5", port: 6380 });
    assert.deepEqual(parseRedisUrl("redis://[::1]"), { host: "::1", port: 6379 });
    for (const url of ["redis://u:p@host:1", "redis://host:1/3", "http://host:1", "not a url"]) assert.throws(() => parseRedisUrl(url), RangeError);
    const redis = await startRedis(t);
    if (!redis) return;
    const store = await RedisStore.open(redis.url);
    const client = await RedisClient.connect("127.0.0.1", redis.port);
    try {
      await store.save("../alice", Uint8Array.of(1, 2, 3));
      assert.deepEqual(await store.load("../alice"), Uint8Array.of(1, 2, 3));
      assert.equal(await store.load("bob"), null);
      assert.deepEqual(await client.command("KEYS", "*"), [new Uint8Array(Buffer.from(`attention-sinks:session:${sessionKey("../alice")}`))]);
    } finally {
      await store.close();
      await client.close();
      redis.stop();
    }
  });
});

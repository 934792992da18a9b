/**
 * Where saved sessions live: a folder (the default; nothing to install) or Redis, which several server
 * processes share. Keys are a hash of the session id, so no id can name a path or collide with another
 * store entry; a value is the session's whole saved state.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { RedisClient } from "./redis_client.js";

export interface SessionStore {
  /** Whether other processes write the same sessions (then no copy in memory can be trusted). */
  readonly shared: boolean;
  /** Where the store is, for messages. */
  readonly location: string;
  load(session_id: string): Promise<Uint8Array | null>;
  /** Replaces the session's state at once: a reader sees the old state or the new one, never a mix. */
  save(session_id: string, state: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

/** The key a session id is stored under: hex SHA-256, so any id maps inside the store. */
export function sessionKey(session_id: string): string {
  return createHash("sha256").update(session_id, "utf8").digest("hex");
}

/**
 * One file per session, `<sha256 of the id>.state`, written to a temporary file and renamed over the old one:
 * a server killed at any point leaves the old state or the new one. Files are not synced to disk on every
 * turn (that costs more than the turn on a small model), so a crash of the machine itself may lose the last
 * turns or leave a file that fails its checksum, which then resets that session with a warning.
 */
export class FolderStore implements SessionStore {
  readonly shared = false;
  readonly location: string;

  constructor(folder: string) {
    this.location = resolve(folder);
  }

  static async open(folder: string): Promise<FolderStore> {
    const store = new FolderStore(folder);
    await mkdir(store.location, { recursive: true });
    return store;
  }

  /** The file of a session. */
  path(session_id: string): string {
    return join(this.location, `${sessionKey(session_id)}.state`);
  }

  async load(session_id: string): Promise<Uint8Array | null> {
    try {
      return await readFile(this.path(session_id));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw error;
    }
  }

  async save(session_id: string, state: Uint8Array): Promise<void> {
    const target = this.path(session_id);
    const temporary = `${target}.${randomBytes(6).toString("hex")}.tmp`;
    try {
      await writeFile(temporary, state, { mode: 0o600 });
      await rename(temporary, target);
    } catch (error) {
      await rm(temporary, { force: true });
      throw error;
    }
  }

  async close(): Promise<void> {}
}

/** Sessions in Redis under `attention-sinks:session:<sha256 of the id>`; SET replaces a value atomically. */
export class RedisStore implements SessionStore {
  readonly shared = true;

  private constructor(
    private readonly client: RedisClient,
    readonly location: string,
  ) {}

  static async open(url: string): Promise<RedisStore> {
    const { host, port } = parseRedisUrl(url);
    const client = await RedisClient.connect(host, port);
    await client.command("PING");
    return new RedisStore(client, `redis://${host}:${port}`);
  }

  private key(session_id: string): string {
    return `attention-sinks:session:${sessionKey(session_id)}`;
  }

  async load(session_id: string): Promise<Uint8Array | null> {
    const value = await this.client.command("GET", this.key(session_id));
    if (value !== null && !(value instanceof Uint8Array)) throw new Error(`Redis answered GET with ${typeof value}`);
    return value;
  }

  async save(session_id: string, state: Uint8Array): Promise<void> {
    await this.client.command("SET", this.key(session_id), state);
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}

/** The host and port of a `redis://HOST:PORT` URL (6379 by default). */
export function parseRedisUrl(url: string): { host: string; port: number } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new RangeError(`${url} is not a URL: give redis://HOST:PORT`);
  }
  if (parsed.protocol !== "redis:" || parsed.hostname === "" || parsed.pathname.replace(/^\/0?$/, "") !== "" || parsed.username || parsed.password) {
    throw new RangeError(`${url}: give redis://HOST:PORT (no user, password or database number)`);
  }
  return { host: parsed.hostname.replace(/^\[|\]$/g, ""), port: parsed.port === "" ? 6379 : Number(parsed.port) };
}

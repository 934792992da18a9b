/**
 * A minimal Redis client: commands as RESP arrays of binary-safe bulk strings over one TCP connection,
 * replies parsed in order (simple strings, errors, integers, bulk strings, arrays). Enough for the few
 * commands the session store sends; pipelining comes free, as replies arrive in command order.
 */
import { connect, type Socket } from "node:net";

export type RedisReply = string | number | Uint8Array | null | RedisReply[];

export class RedisError extends Error {
  override name = "RedisError";
}

interface Pending {
  resolve: (reply: RedisReply) => void;
  reject: (error: Error) => void;
}

/** Thrown by the parser when the buffer ends inside a reply: wait for more bytes. */
const INCOMPLETE = Symbol("incomplete");

export class RedisClient {
  private readonly pending: Pending[] = [];
  private buffer: Buffer = Buffer.alloc(0);
  private failure: Error | null = null;

  private constructor(private readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => this.receive(chunk));
    socket.on("error", (error) => this.fail(new RedisError(`Redis connection failed: ${error.message}`)));
    socket.on("close", () => this.fail(new RedisError("the Redis connection closed")));
  }

  static connect(host: string, port: number): Promise<RedisClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host, port });
      socket.once("error", (error) => reject(new RedisError(`cannot reach Redis at ${host}:${port}: ${error.message}`)));
      socket.once("connect", () => {
        socket.removeAllListeners("error");
        socket.setNoDelay(true);
        resolve(new RedisClient(socket));
      });
    });
  }

  /** Sends one command; resolves to its reply, rejects with a RedisError for an error reply. */
  command(...args: (string | Uint8Array)[]): Promise<RedisReply> {
    if (this.failure) return Promise.reject(this.failure);
    const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
    for (const arg of args) {
      const bytes = typeof arg === "string" ? Buffer.from(arg, "utf8") : Buffer.from(arg.buffer, arg.byteOffset, arg.byteLength);
      parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from("\r\n"));
    }
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(Buffer.concat(parts));
    });
  }

  async close(): Promise<void> {
    if (this.failure) return;
    await this.command("QUIT").catch(() => undefined);
    this.socket.destroy();
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const waiting of this.pending.splice(0)) waiting.reject(this.failure);
  }

  private receive(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    while (this.buffer.length > 0) {
      let parsed: { reply: RedisReply | RedisError; end: number };
      try {
        parsed = parseReply(this.buffer, 0);
      } catch (error) {
        if (error === INCOMPLETE) return;
        this.fail(error as Error);
        this.socket.destroy();
        return;
      }
      this.buffer = this.buffer.subarray(parsed.end);
      const waiting = this.pending.shift();
      if (!waiting) continue;
      if (parsed.reply instanceof RedisError) waiting.reject(parsed.reply);
      else waiting.resolve(parsed.reply);
    }
  }
}

function lineEnd(buffer: Buffer, from: number): number {
  const end = buffer.indexOf("\r\n", from);
  if (end < 0) throw INCOMPLETE;
  return end;
}

function parseReply(buffer: Buffer, at: number): { reply: RedisReply | RedisError; end: number } {
  if (at >= buffer.length) throw INCOMPLETE;
  const type = String.fromCharCode(buffer[at]);
  const end = lineEnd(buffer, at + 1);
  const line = buffer.toString("utf8", at + 1, end);
  switch (type) {
    case "+":
      return { reply: line, end: end + 2 };
    case "-":
      return { reply: new RedisError(`Redis: ${line}`), end: end + 2 };
    case ":":
      return { reply: Number(line), end: end + 2 };
    case "$": {
      const length = Number(line);
      if (length < 0) return { reply: null, end: end + 2 };
      const start = end + 2;
      if (buffer.length < start + length + 2) throw INCOMPLETE;
      // A copy: the buffer it came in is reused for later replies.
      return { reply: new Uint8Array(buffer.subarray(start, start + length)), end: start + length + 2 };
    }
    case "*": {
      const count = Number(line);
      if (count < 0) return { reply: null, end: end + 2 };
      const items: RedisReply[] = [];
      let next = end + 2;
      for (let i = 0; i < count; i++) {
        const item = parseReply(buffer, next);
        if (item.reply instanceof RedisError) throw item.reply;
        items.push(item.reply);
        next = item.end;
      }
      return { reply: items, end: next };
    }
    default:
      throw new RedisError(`unexpected Redis reply type ${JSON.stringify(type)}`);
  }
}

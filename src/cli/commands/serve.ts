/**
 * `attention-sinks serve`: an OpenAI-compatible HTTP server on one endless attention-sink model, whose
 * sessions go on for ever in constant memory and survive restarts (src/server).
 */
import { once } from "node:events";
import { homedir } from "node:os";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { random } from "@huggingface/transformers";
import { createApiServer } from "../../server/http_server.js";
import { ModelService } from "../../server/model_service.js";
import { FolderStore, parseRedisUrl, RedisStore, type SessionStore } from "../../server/session_store.js";
import { flags, UsageError } from "../args.js";
import { defineCommand } from "../command.js";
import { CACHE_FLAGS, loadBackend, MODEL_FLAG, requiredString, RUNTIME_FLAGS, SAMPLING_FLAGS, samplingOptions } from "../model_flags.js";
import { handleInterrupts } from "../signals.js";
import { describeSetup } from "./generate.js";

const DEFAULT_STATE_DIR = join(homedir(), ".cache", "attention-sinks", "sessions");

const spec = {
  name: "serve",
  summary: "Serve the model over an OpenAI-compatible HTTP API, with endless chat sessions that survive restarts.",
  flags: flags({
    ...MODEL_FLAG,
    host: { type: "string", default: "127.0.0.1", metavar: "HOST", description: "the address to listen on (0.0.0.0 for every interface)" },
    port: { type: "integer", min: 0, max: 65535, default: 8080, metavar: "PORT", description: "the port to listen on (0: any free one, printed on stderr)" },
    api_key: {
      type: "string",
      metavar: "KEY",
      description: "require the header Authorization: Bearer KEY on every request (default: the ATTENTION_SINKS_API_KEY environment variable, else no key)",
    },
    state_dir: { type: "string", metavar: "DIR", description: `the folder sessions are saved in (default ${DEFAULT_STATE_DIR})` },
    state_store: {
      type: "string",
      metavar: "URL",
      description: "save sessions in Redis instead (redis://HOST:PORT), so that several server processes share them",
    },
    max_sessions: { type: "integer", min: 1, default: 256, metavar: "N", description: "sessions kept in memory; the least recently used beyond N are read back from the store" },
    session_idle_seconds: { type: "integer", min: 1, default: 300, metavar: "S", description: "a session unused for S seconds leaves memory (it stays in the store)" },
    max_queue: { type: "integer", min: 1, default: 32, metavar: "N", description: "requests that may wait for the model; more are answered 429 with Retry-After" },
    max_new_tokens: {
      type: "integer",
      min: 1,
      default: 1024,
      metavar: "N",
      description: "the most tokens one reply may have, and the default when a request gives no max_tokens",
    },
    max_body_bytes: { type: "integer", min: 1024, default: 1_048_576, metavar: "N", description: "the largest request body accepted (larger ones are answered 413)" },
    ...CACHE_FLAGS,
    ...SAMPLING_FLAGS,
    ...RUNTIME_FLAGS,
  }),
  examples: [
    "attention-sinks serve --model_name_or_path MODEL",
    "attention-sinks serve --model_name_or_path MODEL --port 8000 --api_key sk-local --state_dir ./sessions",
    "attention-sinks serve --model_name_or_path MODEL --host 0.0.0.0 --state_store redis://10.0.0.5:6379",
  ],
};

export const serveCommand = defineCommand(spec, async ({ flags: values }) => {
  const model = requiredString(values.model_name_or_path, "model_name_or_path");
  const sampling = samplingOptions(values);
  if (values.state_dir !== undefined && values.state_store !== undefined) throw new UsageError("give --state_dir or --state_store, not both");
  if (values.state_store !== undefined) {
    try {
      parseRedisUrl(values.state_store);
    } catch (error) {
      throw new UsageError(`--state_store ${(error as Error).message}`);
    }
  }
  const api_key = values.api_key ?? (process.env.ATTENTION_SINKS_API_KEY || undefined);
  const backend = await loadBackend({ ...values, experiment: "attention_sinks" });
  if (values.seed !== undefined) random.seed(values.seed);
  const store: SessionStore = values.state_store !== undefined ? await RedisStore.open(values.state_store) : await FolderStore.open(values.state_dir ?? DEFAULT_STATE_DIR);
  const service = new ModelService(backend, store, {
    model,
    state_signature: JSON.stringify([model, backend.model_type, backend.attention_sinks, values.dtype ?? "default"]),
    max_tokens: values.max_new_tokens,
    sampling,
    max_queue: values.max_queue,
    max_sessions: values.max_sessions,
    idle_seconds: values.session_idle_seconds,
    warn: (message) => process.stderr.write(`warning: ${message}\n`),
  });
  const server = createApiServer(service, {
    api_key,
    max_body_bytes: values.max_body_bytes,
    log: (message) => process.stderr.write(`error: ${message}\n`),
  });
  server.listen(values.port, values.host);
  await Promise.race([once(server, "listening"), once(server, "error").then(([error]) => Promise.reject(new UsageError(`cannot listen on ${values.host}:${values.port}: ${(error as Error).message}`)))]);
  const { address, port } = server.address() as AddressInfo;
  const host = address.includes(":") ? `[${address}]` : address;
  process.stderr.write(`${describeSetup(backend, "attention_sinks", sampling)}\n`);
  process.stderr.write(`sessions in ${store.location}${api_key === undefined ? "" : "; API key required"}\n`);
  process.stderr.write(`listening on http://${host}:${port}/v1\n`);

  // SIGTERM or Ctrl-C: stop taking requests, stop the running reply and save it, then exit (a second signal exits at once).
  const stopped = new Promise<void>((resolve) => {
    const interrupts = handleInterrupts(() => {
      process.stderr.write("stopping: saving sessions\n");
      server.close();
      server.closeIdleConnections();
      void service.close().then(() => {
        interrupts.uninstall();
        resolve();
      });
    });
  });
  await stopped;
  server.closeAllConnections();
  process.stderr.write("stopped\n");
  return 0;
});

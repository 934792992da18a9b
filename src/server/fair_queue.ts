/**
 * The queue in front of one model: jobs run one at a time, taken round-robin across lanes (one lane per
 * session, or per stateless request), so a client sending many requests cannot starve the others; at most
 * `capacity` jobs wait, and a job whose client left is dropped before it runs.
 */
import { ApiError } from "./openai_api.js";

interface Job {
  run: () => Promise<void>;
  fail: (error: unknown) => void;
}

export class FairQueue {
  /** Waiting jobs by lane, lanes in the order they take turns. */
  private readonly lanes = new Map<string, Job[]>();
  private waiting = 0;
  private running = false;
  /** Resolved (and cleared) when the queue runs dry. */
  private whenIdle: (() => void)[] = [];
  /** Mean seconds of recent jobs, for Retry-After. */
  private meanSeconds = 1;

  constructor(private readonly capacity: number) {}

  /** Resolves once no job runs or waits. */
  idle(): Promise<void> {
    if (!this.running && this.waiting === 0) return Promise.resolve();
    return new Promise((resolve) => this.whenIdle.push(resolve));
  }

  /**
   * Runs `task` when its turn comes; rejects at once with a 429 when the queue is full, and with the
   * signal's reason when it aborts while the job waits.
   */
  submit<T>(lane: string, task: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (this.waiting >= this.capacity) {
      const seconds = Math.max(1, Math.ceil(this.meanSeconds * (this.waiting + 1)));
      return Promise.reject(
        new ApiError(429, `the server is busy: ${this.waiting} requests wait for the model; retry in ${seconds} s`, "rate_limit_error", null, "rate_limit_exceeded", {
          "Retry-After": String(seconds),
        }),
      );
    }
    return new Promise<T>((resolve, reject) => {
      const job: Job = {
        run: async () => {
          signal?.removeEventListener("abort", onAbort);
          const started = performance.now();
          try {
            resolve(await task());
          } catch (error) {
            reject(error);
          } finally {
            this.meanSeconds = 0.8 * this.meanSeconds + 0.2 * ((performance.now() - started) / 1000);
          }
        },
        fail: reject,
      };
      const onAbort = () => {
        const queue = this.lanes.get(lane);
        const at = queue?.indexOf(job) ?? -1;
        if (at < 0) return;
        queue!.splice(at, 1);
        if (queue!.length === 0) this.lanes.delete(lane);
        this.waiting--;
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      const queue = this.lanes.get(lane);
      if (queue) queue.push(job);
      else this.lanes.set(lane, [job]);
      this.waiting++;
      void this.next();
    });
  }

  /** Rejects every waiting job with `error` (the server is stopping). */
  drain(error: unknown): void {
    for (const jobs of this.lanes.values()) for (const job of jobs) job.fail(error);
    this.lanes.clear();
    this.waiting = 0;
    if (!this.running) for (const resolve of this.whenIdle.splice(0)) resolve();
  }

  private async next(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (let job = this.take(); job !== null; job = this.take()) await job.run();
    } finally {
      this.running = false;
      for (const resolve of this.whenIdle.splice(0)) resolve();
    }
  }

  /** The first lane's next job; the lane then goes to the back of the line. */
  private take(): Job | null {
    const first = this.lanes.entries().next();
    if (first.done) return null;
    const [lane, jobs] = first.value;
    const job = jobs.shift()!;
    this.lanes.delete(lane);
    if (jobs.length > 0) this.lanes.set(lane, jobs);
    this.waiting--;
    return job;
  }
}

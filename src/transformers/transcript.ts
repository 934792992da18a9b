/**
 * Turn bookkeeping of one stream, for the generation hooks: a fingerprint of every token fed (to recognise
 * a re-sent transcript) and the tokens the last `generate()` sampled but never fed.
 */

/** FNV-1a over token ids in two independent 32-bit lanes per row. */
class Fingerprint {
  readonly lanes: Uint32Array;

  constructor(batch: number) {
    this.lanes = new Uint32Array(batch * 2);
    for (let b = 0; b < batch; b++) {
      this.lanes[2 * b] = 0x811c9dc5;
      this.lanes[2 * b + 1] = 0x01000193;
    }
  }

  /** Adds rows of `length` tokens starting at `start` in a [batch, stride] id array. */
  add(ids: ArrayLike<bigint>, stride: number, start: number, length: number): void {
    const lanes = this.lanes;
    for (let b = 0; b < lanes.length / 2; b++) {
      for (let t = start; t < start + length; t++) {
        const token = Number(ids[b * stride + t]);
        lanes[2 * b] = Math.imul(lanes[2 * b] ^ token, 0x01000193) >>> 0;
        lanes[2 * b + 1] = Math.imul(lanes[2 * b + 1] ^ (token + 0x9e3779b9), 0x85ebca6b) >>> 0;
      }
    }
  }
}

export interface TranscriptSnapshot {
  lanes: Uint32Array | null;
  fed: number;
  pending: BigInt64Array | null;
}

export class Transcript {
  private fingerprint: Fingerprint | null = null;
  private fed = 0;
  /** Tokens generate() sampled last but never fed (one per row): the next turn feeds them first. */
  private pending: BigInt64Array | null = null;

  /** Records tokens [start, start + n) of each row of a [batch, stride] id array as fed. */
  record(ids: ArrayLike<bigint>, batch: number, stride: number, start: number, n: number): void {
    this.fingerprint ??= new Fingerprint(batch);
    this.fingerprint.add(ids, stride, start, n);
    this.fed += n;
  }

  /**
   * The length of the prefix of `ids` ([batch, length]) already fed: the whole stream when `ids` re-sends
   * it (as a chat template re-rendering the conversation does), else 0.
   */
  streamedPrefix(ids: ArrayLike<bigint>, batch: number, length: number): number {
    if (this.fingerprint === null || length <= this.fed) return 0;
    const probe = new Fingerprint(batch);
    probe.add(ids, length, 0, this.fed);
    return probe.lanes.every((value, i) => value === this.fingerprint!.lanes[i]) ? this.fed : 0;
  }

  /** The bookkeeping as saved with a stream: the fingerprint (null before any token), the count fed, the pending tokens. */
  save(): TranscriptSnapshot {
    return { lanes: this.fingerprint?.lanes.slice() ?? null, fed: this.fed, pending: this.pending?.slice() ?? null };
  }

  static load(snapshot: TranscriptSnapshot): Transcript {
    const transcript = new Transcript();
    if (snapshot.lanes !== null) {
      transcript.fingerprint = new Fingerprint(snapshot.lanes.length / 2);
      transcript.fingerprint.lanes.set(snapshot.lanes);
    }
    transcript.fed = snapshot.fed;
    transcript.pending = snapshot.pending;
    return transcript;
  }

  setPending(tokens: BigInt64Array): void {
    this.pending = tokens;
  }

  /** Takes the tokens a previous generation left unfed (null when none). */
  takePending(): BigInt64Array | null {
    const pending = this.pending;
    this.pending = null;
    return pending;
  }
}

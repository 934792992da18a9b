/**
 * Saved state as its parts: a JSON header and typed-array sections, before state_record.ts encodes them
 * into a checked binary record. Streams save to and load from sections, so they need no Node module.
 */

export type StateArray = Float32Array | Float64Array | Uint16Array | Uint32Array | BigInt64Array | Uint8Array;

/** What a record holds apart from its kind. */
export interface StateSections {
  header: Record<string, unknown>;
  arrays: StateArray[];
}

/** Saved state that cannot be read back: corrupt, truncated, of another kind, or from another model. */
export class StateRecordError extends Error {
  override name = "StateRecordError";
}

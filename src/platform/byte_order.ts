/**
 * This machine's byte order, read from a typed array rather than node:os, so the modules that need it also
 * load in a browser.
 */

/** "LE" or "BE", as node:os `endianness()` names them (saved state records keep the name). */
export function byteOrder(): "LE" | "BE" {
  return new Uint8Array(Uint16Array.of(1).buffer)[0] === 1 ? "LE" : "BE";
}

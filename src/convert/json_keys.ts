/**
 * Duplicate keys in JSON text. `JSON.parse` keeps the last of two equal keys without a word, so a header or
 * config that says one thing twice would be read as whichever came last; untrusted JSON is checked first.
 */

/** A key that one JSON object holds twice, and the keys of the objects around it (outermost first). */
export interface DuplicateKey {
  key: string;
  path: string[];
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/**
 * The first key some object in `text` holds twice, or undefined. `text` must be valid JSON (parsed already):
 * the scan only follows strings and brackets.
 */
export function findDuplicateKey(text: string): DuplicateKey | undefined {
  /** Open containers: the keys seen so far in an object (null for an array), and the key it is under. */
  const open: { keys: Set<string> | null; under: string }[] = [];
  let expectingKey = false;
  let lastKey = "";
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code === QUOTE) {
      let end = i + 1;
      let escaped = false;
      while (text.charCodeAt(end) !== QUOTE) {
        if (text.charCodeAt(end) === BACKSLASH) {
          escaped = true;
          end++;
        }
        end++;
      }
      const keys = open.at(-1)?.keys;
      if (keys && expectingKey) {
        const key = escaped ? (JSON.parse(text.slice(i, end + 1)) as string) : text.slice(i + 1, end);
        if (keys.has(key)) return { key, path: open.slice(1).map((container) => container.under) };
        keys.add(key);
        lastKey = key;
        expectingKey = false;
      }
      i = end;
    } else if (code === 0x7b /* { */ || code === 0x5b /* [ */) {
      const parent = open.at(-1);
      open.push({ keys: code === 0x7b ? new Set() : null, under: parent?.keys ? lastKey : "[]" });
      expectingKey = code === 0x7b;
    } else if (code === 0x7d /* } */ || code === 0x5d /* ] */) {
      open.pop();
    } else if (code === 0x2c /* , */) {
      expectingKey = Boolean(open.at(-1)?.keys);
    }
  }
  return undefined;
}

/** How a message names a duplicate key: `"dtype" (in "model.norm.weight")`. */
export function describeDuplicateKey({ key, path }: DuplicateKey): string {
  return path.length === 0 ? JSON.stringify(key) : `${JSON.stringify(key)} (in ${path.map((name) => JSON.stringify(name)).join(" > ")})`;
}

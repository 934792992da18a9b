/**
 * Sequential, all-or-nothing file output for large models: every file is written under a `.partial` name and
 * renamed into place only once all of them are complete, so a failed export leaves nothing behind.
 */
import { open, rename, rm, type FileHandle } from "node:fs/promises";

/** Small writes are gathered up to this size before they reach the file. */
const BUFFER_SIZE = 1 << 20;

export class BufferedFileSink {
  private readonly buffer = new Uint8Array(BUFFER_SIZE);
  private used = 0;

  constructor(private readonly handle: FileHandle) {}

  async write(bytes: Uint8Array): Promise<void> {
    if (this.used + bytes.byteLength > BUFFER_SIZE) await this.flush();
    if (bytes.byteLength >= BUFFER_SIZE) {
      await writeFully(this.handle, bytes);
      return;
    }
    this.buffer.set(bytes, this.used);
    this.used += bytes.byteLength;
  }

  async flush(): Promise<void> {
    await writeFully(this.handle, this.buffer.subarray(0, this.used));
    this.used = 0;
  }
}

async function writeFully(handle: FileHandle, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.byteLength) {
    const { bytesWritten } = await handle.write(bytes, written, bytes.byteLength - written);
    written += bytesWritten;
  }
}

export interface FileContent {
  path: string;
  write(sink: BufferedFileSink): Promise<void>;
}

/** Writes each file in order, then renames them all into place; on any error removes what it wrote. */
export async function writeFilesAtomically(files: readonly FileContent[]): Promise<void> {
  const partialPaths = files.map((file) => `${file.path}.partial`);
  try {
    for (const [i, file] of files.entries()) {
      const handle = await open(partialPaths[i], "w");
      try {
        const sink = new BufferedFileSink(handle);
        await file.write(sink);
        await sink.flush();
      } finally {
        await handle.close();
      }
    }
    for (const [i, file] of files.entries()) await rename(partialPaths[i], file.path);
  } catch (error) {
    await Promise.all(partialPaths.map((path) => rm(path, { force: true })));
    throw error;
  }
}

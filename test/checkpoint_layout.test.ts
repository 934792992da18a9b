/**
 * Checkpoint layouts that a reader looking only at each tensor on its own would accept and convert into a
 * garbage model: GGUF tensor data that overlaps, is out of order, leaves gaps or does not match its type,
 * a tensor count one short, an alignment that only a 32-bit test calls a power of two, a `.gguf` without
 * its magic; safetensors ranges that overlap, leave gaps or stop short, and JSON keys given twice.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BoundedReader, memorySource } from "../src/convert/bounded_reader.js";
import { convertCheckpoint } from "../src/convert/convert.js";
import { ConversionError } from "../src/convert/errors.js";
import { readGguf } from "../src/convert/gguf.js";
import { findDuplicateKey } from "../src/convert/json_keys.js";
import { readSafetensors } from "../src/convert/safetensors.js";
import { floatBytes, GGML, safetensorsWithHeader, tinyLlamaGguf, writeGguf, writeTinyLlamaDirectory, type GgufTensorData } from "./support/checkpoint_files.js";

const work = mkdtempSync(join(tmpdir(), "attention-sinks-layout-"));
after(() => rmSync(work, { recursive: true, force: true }));

/** Asserts that `run` throws a ConversionError about `file` whose message matches `pattern`. */
function refused(run: () => unknown, file: string, pattern: RegExp): void {
  assert.throws(run, (error: Error) => {
    assert.ok(error instanceof ConversionError, `not a ConversionError: ${error}`);
    assert.equal(error.file, file);
    assert.match(error.problem, pattern);
    return true;
  });
}

describe("GGUF tensor layout, checked as llama.cpp does", () => {
  const values = (count: number, start: number) => floatBytes(Float32Array.from({ length: count }, (_, i) => start + i));
  /** Three f32 tensors of 10, 16 and 3 values: padded to 64, 64 and 32 bytes at the default alignment of 32. */
  const tensors = (): GgufTensorData[] => [
    { name: "a", dims: [10], type: GGML.F32, data: values(10, 0) },
    { name: "b", dims: [4, 4], type: GGML.F32, data: values(16, 100) },
    { name: "c", dims: [3], type: GGML.F32, data: values(3, 200) },
  ];
  const metadata = () => new Map([["general.architecture", "llama"]]);
  const read = (bytes: Uint8Array) => readGguf(new BoundedReader(memorySource("t.gguf", bytes)));

  it("reads a well-formed file: each tensor where the one before ends, rounded up to the alignment", () => {
    const file = read(writeGguf(3, metadata(), tensors()));
    const start = file.tensors[0].offset;
    assert.equal(start % 32, 0);
    assert.deepEqual(file.tensors.map((t) => [t.offset - start, t.byteLength]), [[0, 40], [64, 64], [128, 12]]);
  });

  it("refuses overlapping, swapped and gapped data offsets", () => {
    refused(() => read(writeGguf(3, metadata(), tensors(), { offsets: [0, 32, 128] })), "t.gguf", /tensor b: its data offset is 32, but the data of tensor a ends \(aligned to 32\) at 64/);
    refused(() => read(writeGguf(3, metadata(), tensors(), { offsets: [64, 0, 128] })), "t.gguf", /tensor a: its data offset is 64, but the data section starts at 0/);
    refused(() => read(writeGguf(3, metadata(), tensors(), { offsets: [0, 96, 160] })), "t.gguf", /tensor b: its data offset is 96, .* at 64: tensor data overlaps, is out of order or leaves a gap/);
  });

  it("refuses a type that does not match the tensor's bytes", () => {
    // b declared F16 over its f32 bytes: 32 bytes by its type, so c should start at 96, not 128.
    const wrongType = tensors();
    wrongType[1].type = GGML.F16;
    refused(() => read(writeGguf(3, metadata(), wrongType, { offsets: [0, 64, 128] })), "t.gguf", /tensor c: its data offset is 128, but the data of tensor b ends .* at 96/);
    // On the last tensor the bytes it does not claim are left over at the end of the file.
    const wrongLast = tensors();
    wrongLast[2] = { name: "c", dims: [3], type: GGML.F32, data: values(16, 200) };
    refused(() => read(writeGguf(3, metadata(), wrongLast)), "t.gguf", /has 32 bytes after the data of its 3 tensors/);
  });

  it("refuses a tensor count one lower than the tensors described, instead of converting a model without its output head", async () => {
    const intact = tinyLlamaGguf();
    const short = intact.slice();
    const view = new DataView(short.buffer);
    const count = Number(view.getBigUint64(8, true));
    view.setBigUint64(8, BigInt(count - 1), true);
    const path = join(work, "short-count.gguf");
    writeFileSync(path, short);
    const out = join(work, "short-count-out");
    await assert.rejects(convertCheckpoint(path, out), (error: Error) => {
      assert.ok(error instanceof ConversionError && error.file === path, String(error));
      assert.match(error.problem, new RegExp(`bytes after the data of its ${count - 1} tensors: the tensor count`));
      return true;
    });
    assert.equal(existsSync(out), false);
    // The intact file converts.
    writeFileSync(join(work, "intact.gguf"), intact);
    await convertCheckpoint(join(work, "intact.gguf"), join(work, "intact-out"));
    assert.ok(existsSync(join(work, "intact-out", "onnx", "model.onnx")));
  });

  it("tests the alignment for a power of two with exact integers: 3 * 2^31 is refused", () => {
    const alignment = 3 * 2 ** 31;
    // The 32-bit test this replaces: ToInt32 turns 3 * 2^31 into -2^31, and -2^31 & (2^31 - 1) is 0.
    assert.equal(alignment & (alignment - 1), 0);
    const bytes = writeGguf(3, new Map([["general.alignment", alignment]]), tensors());
    refused(() => read(bytes), "t.gguf", /general\.alignment 6442450944 is not a power of two/);
    assert.equal(read(writeGguf(3, new Map([["general.alignment", 64]]), tensors(), { alignment: 64 })).tensors.length, 3);
  });

  it("reports a .gguf file with a damaged magic as a bad GGUF file, not as a llama2.c checkpoint", async () => {
    const bytes = tinyLlamaGguf();
    bytes[0] = 0x58;
    const path = join(work, "bad-magic.gguf");
    writeFileSync(path, bytes);
    await assert.rejects(convertCheckpoint(path, join(work, "bad-magic-out")), (error: Error) => {
      assert.ok(error instanceof ConversionError && error.file === path);
      assert.match(error.problem, /is not a GGUF file \(no GGUF magic\)/);
      assert.doesNotMatch(error.message, /llama2\.c/);
      return true;
    });
  });
});

describe("safetensors layout", () => {
  const data = floatBytes(Float32Array.from({ length: 10 }, (_, i) => i));
  const entry = (begin: number, end: number) => ({ dtype: "F32", shape: [(end - begin) / 4], data_offsets: [begin, end] });
  const read = (header: unknown, section: Uint8Array = data) =>
    readSafetensors(new BoundedReader(memorySource("m.safetensors", safetensorsWithHeader(typeof header === "string" ? header : JSON.stringify(header), section))));

  it("reads ranges that tile the data section, in any key order", () => {
    // Writers order the JSON by name and the data by dtype, so the two orders need not agree.
    const tensors = read({ a: entry(24, 40), z: entry(0, 24) });
    assert.deepEqual(Array.from(tensors.get("a")!.load().data), [6, 7, 8, 9]);
    assert.deepEqual(Array.from(tensors.get("z")!.load().data), [0, 1, 2, 3, 4, 5]);
  });

  it("refuses overlapping ranges, gaps and data the header does not describe", () => {
    refused(() => read({ a: entry(0, 24), b: entry(16, 40) }), "m.safetensors", /tensor b: data_offsets \[16, 40\] overlap those of tensor a, which end at 24/);
    refused(() => read({ a: entry(0, 16), b: entry(24, 40) }), "m.safetensors", /tensor b: data_offsets start at 24, but tensor a ends at 16: the header leaves a gap/);
    refused(() => read({ a: entry(8, 40) }), "m.safetensors", /tensor a: data_offsets start at 8, but the data section starts at 0/);
    refused(() => read({ a: entry(0, 24) }), "m.safetensors", /the tensors' data ends at byte 24 of the data section, which has 40/);
  });

  it("refuses a dtype and shape that do not match the byte range", () => {
    refused(() => read({ a: { dtype: "F16", shape: [10], data_offsets: [0, 40] } }), "m.safetensors", /tensor a: F16 \[10\] needs 20 bytes but data_offsets give 40/);
  });

  it("names a missing field as missing", () => {
    const { dtype, shape, data_offsets } = entry(0, 40);
    refused(() => read({ a: { shape, data_offsets } }), "m.safetensors", /^tensor a: the header entry has no dtype$/);
    refused(() => read({ a: { dtype, data_offsets } }), "m.safetensors", /^tensor a: the header entry has no shape$/);
    refused(() => read({ a: { dtype, shape } }), "m.safetensors", /^tensor a: the header entry has no data_offsets$/);
  });

  it("refuses a key given twice, which JSON.parse would resolve silently to the last", () => {
    const twice = `{"a": ${JSON.stringify(entry(0, 40))}, "a": ${JSON.stringify(entry(0, 40))}}`;
    refused(() => read(twice), "m.safetensors", /the header has the key "a" twice/);
    const dtypeTwice = `{"a": {"dtype": "F32", "shape": [10], "dtype": "F16", "data_offsets": [0, 40]}}`;
    refused(() => read(dtypeTwice), "m.safetensors", /the header has the key "dtype" \(in "a"\) twice/);
  });

  it("refuses a config.json with a key given twice, naming the file", async () => {
    const dir = await writeTinyLlamaDirectory(join(work, "config-twice"));
    const text = readFileSync(join(dir, "config.json"), "utf8");
    writeFileSync(join(dir, "config.json"), text.replace('"num_hidden_layers": 2,', '"num_hidden_layers": 2, "num_hidden_layers": 3,'));
    await assert.rejects(convertCheckpoint(dir, join(work, "config-twice-out")), (error: Error) => {
      assert.ok(error instanceof ConversionError && error.file === join(dir, "config.json"), String(error));
      assert.match(error.problem, /has the key "num_hidden_layers" twice/);
      return true;
    });
  });
});

describe("duplicate JSON keys", () => {
  it("are found at any depth, escaped or not, and only among the keys of one object", () => {
    assert.deepEqual(findDuplicateKey('{"a": 1, "b": {"c": 2, "c": 3}}'), { key: "c", path: ["b"] });
    assert.deepEqual(findDuplicateKey('{"x": [{"k": 1}, {"k": 2, "\\u006b": 3}]}'), { key: "k", path: ["x", "[]"] });
    // Equal keys in different objects, and strings equal to keys as values, are not duplicates.
    assert.equal(findDuplicateKey('{"a": {"k": "a"}, "b": {"k": "a\\"", "a": ["a", "a"]}}'), undefined);
  });
});

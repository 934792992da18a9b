/**
 * Writing GGUF version 3 from every checkpoint format the package reads: the package's own GGUF reader reads
 * the file back to the same architecture, weights and vocabulary, the tokenizer it rebuilds encodes text as
 * the source's does, and a version 1 file is upgraded with its scores intact. (That llama.cpp loads the
 * file and computes the same model is checked in llama_cpp_backend.test.ts.)
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LlamaTokenizer } from "@huggingface/transformers";
import { BoundedReader, openFileSource } from "../src/convert/bounded_reader.js";
import { convertCheckpointToGguf, ConversionError } from "../src/convert/index.js";
import { openCheckpoint } from "../src/convert/formats.js";
import { readGguf } from "../src/convert/gguf.js";
import { runCli } from "./support/cli.js";
import { sharedFiles } from "./support/shared_data.js";

const work = mkdtempSync(join(tmpdir(), "attention-sinks-gguf-"));
process.on("exit", () => rmSync(work, { recursive: true, force: true }));
let outputs = 0;
const freshFile = () => join(work, `model-${++outputs}.gguf`);

const SOURCES = [
  { name: "a llama2.c checkpoint", files: ["models/stories260K/stories260K.bin", "models/stories260K/tok512.bin"] },
  { name: "a GGUF version 1 file", files: ["models/stories260K/stories260K.v1.gguf"] },
  { name: "a Hugging Face safetensors directory", files: ["models/tinystories-656k"] },
];

function ggufVersion(path: string): number {
  const source = openFileSource(path);
  try {
    return readGguf(new BoundedReader(source)).version;
  } finally {
    source.close();
  }
}

function tokenizerOf(files: ReadonlyMap<string, string>): LlamaTokenizer {
  return new LlamaTokenizer(JSON.parse(files.get("tokenizer.json")!), JSON.parse(files.get("tokenizer_config.json")!));
}

describe("convertCheckpointToGguf", () => {
  for (const { name, files: relatives } of SOURCES) {
    it(`writes ${name} as GGUF v3 that reads back to the same spec, weights and tokenizer`, async (t) => {
      const files = sharedFiles(t, ...relatives, "data/tinystories_valid.txt");
      if (!files) return;
      const [source, tokenizer] = relatives.length === 2 ? files : [files[0], undefined];
      const out = freshFile();
      await convertCheckpointToGguf(source, out, { tokenizer });
      assert.equal(ggufVersion(out), 3);

      const original = openCheckpoint(source, tokenizer);
      const written = openCheckpoint(out);
      t.after(() => {
        original.close();
        written.close();
      });
      // GGUF stores the norm epsilon as float32, as llama.cpp reads it.
      assert.deepEqual(written.spec, { ...original.spec, norm_eps: Math.fround(original.spec.norm_eps) });
      assert.deepEqual([...written.tensors.keys()].sort(), [...original.tensors.keys()].sort());
      for (const [weight, entry] of original.tensors) {
        const expected = entry.load();
        const actual = written.tensors.get(weight)!.load();
        assert.deepEqual(actual.shape, expected.shape, weight);
        assert.ok(Buffer.from(actual.data.buffer, actual.data.byteOffset, actual.data.byteLength).equals(
          Buffer.from(expected.data.buffer, expected.data.byteOffset, expected.data.byteLength),
        ), `${weight} differs after the round trip`);
      }
      const config = JSON.parse(written.files.get("config.json")!) as Record<string, unknown>;
      const originalConfig = JSON.parse(original.files.get("config.json")!) as Record<string, unknown>;
      for (const key of ["max_position_embeddings", "bos_token_id", "eos_token_id", "tie_word_embeddings"]) {
        assert.equal(config[key], originalConfig[key], key);
      }
      const text = readFileSync(files.at(-1)!, "utf8").slice(0, 4000);
      assert.deepEqual(tokenizerOf(written.files).encode(text), tokenizerOf(original.files).encode(text));
    });
  }

  it("upgrades stories260K.v1.gguf with every piece, score and token type as the file has them", async (t) => {
    const files = sharedFiles(t, "models/stories260K/stories260K.v1.gguf");
    if (!files) return;
    assert.equal(ggufVersion(files[0]), 1);
    const out = freshFile();
    await convertCheckpointToGguf(files[0], out);
    const original = openCheckpoint(files[0]);
    const written = openCheckpoint(out);
    t.after(() => {
      original.close();
      written.close();
    });
    assert.equal(written.vocabulary!.pieces.length, 512);
    assert.deepEqual(written.vocabulary, original.vocabulary);
  });

  it("refuses an existing output and leaves no partial file when the source is bad", async (t) => {
    const existing = freshFile();
    writeFileSync(existing, "keep me");
    await assert.rejects(convertCheckpointToGguf(join(work, "missing-dir"), existing), ConversionError);
    assert.equal(readFileSync(existing, "utf8"), "keep me");

    const dir = mkdtempSync(join(work, "bad-"));
    const bad = join(dir, "bad.bin");
    writeFileSync(bad, Buffer.alloc(64, 1));
    const out = join(dir, "out.gguf");
    await assert.rejects(convertCheckpointToGguf(bad, out, { tokenizer: bad }), ConversionError);
    assert.equal(existsSync(out), false);
    assert.deepEqual(readdirSync(dir), ["bad.bin"]);
    t.diagnostic("a failed conversion leaves only the source behind");
  });

  it("is what `convert SOURCE OUT.gguf` runs; --dtype fp16 is for model directories", async (t) => {
    const files = sharedFiles(t, "models/stories260K/stories260K.v1.gguf");
    if (!files) return;
    const out = freshFile();
    const result = await runCli(["convert", files[0], out]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /converted .*stories260K\.v1\.gguf -> .*\.gguf in \d+\.\d s/);
    assert.equal(ggufVersion(out), 3);
    const refused = await runCli(["convert", files[0], freshFile(), "--dtype", "fp16"]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /--dtype fp16 applies to model directories/);
  });
});

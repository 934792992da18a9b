/**
 * llama2.c tokenizer files (`tokenizer.bin`, `tok512.bin`, ...): an int32 max_token_length, then per token a
 * float32 score, an int32 byte length and the UTF-8 bytes. The file does not store its token count: it has
 * exactly the model's vocab_size entries.
 */
import { readdirSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { BoundedReader, type ByteSource } from "./bounded_reader.js";
import { ConversionError } from "./errors.js";
import type { PieceKind, SentencePieceVocab } from "./sentencepiece_tokenizer.js";

/** llama2.c's fixed special ids. */
const UNK_ID = 0;
const BOS_ID = 1;
const EOS_ID = 2;

const BYTE_PIECE = /^<0x[0-9A-F]{2}>$/;

/**
 * Reads a llama2.c tokenizer for a model of `vocabSize` tokens, restoring the SentencePiece pieces that
 * llama2.c's export rewrote for printing ("▁" became " ", BOS and EOS became "\n<s>\n" and "\n</s>\n").
 */
export function readLlama2cTokenizer(source: ByteSource, vocabSize: number, modelMaxLength: number): SentencePieceVocab {
  const reader = new BoundedReader(source);
  const cursor = reader.cursor();
  const maxTokenLength = reader.requireInt(cursor.i32("max_token_length"), "max_token_length", 1, 1 << 20);
  // Each entry takes at least 9 bytes: score, length and one byte of text.
  cursor.requireFits(vocabSize, 9, "the model's vocab_size");
  const pieces = [];
  for (let id = 0; id < vocabSize; id++) {
    const what = `token ${id}`;
    const score = cursor.f32(`${what} score`);
    const length = reader.requireInt(cursor.i32(`${what} length`), `${what} length`, 1, maxTokenLength);
    const text = cursor.utf8(length, `${what} text`);
    let kind: PieceKind = BYTE_PIECE.test(text) ? "byte" : "normal";
    if (id === UNK_ID) kind = "unknown";
    if (id === BOS_ID || id === EOS_ID) kind = "control";
    const restored = id === BOS_ID ? "<s>" : id === EOS_ID ? "</s>" : text.replaceAll(" ", "\u2581");
    pieces.push({ text: restored, score, kind });
  }
  if (cursor.remaining !== 0) {
    throw reader.fail(
      `has ${cursor.remaining} bytes after the model's ${vocabSize} tokens: it belongs to a model with a larger vocabulary`,
    );
  }
  return {
    pieces,
    bosId: BOS_ID,
    eosId: EOS_ID,
    unkId: UNK_ID,
    addBos: true,
    addEos: false,
    addSpacePrefix: true,
    modelMaxLength,
  };
}

/**
 * The llama2.c tokenizer beside a checkpoint: `tokenizer.bin`, or the one `tok*.bin` in its folder.
 * Anything else is ambiguous and must be named explicitly.
 */
export function findLlama2cTokenizer(checkpointPath: string): string {
  const folder = dirname(checkpointPath);
  const candidates = readdirSync(folder).filter(
    (name) => (name === "tokenizer.bin" || /^tok.*\.bin$/.test(name)) && name !== basename(checkpointPath),
  );
  if (candidates.length === 1) return join(folder, candidates[0]);
  const found = candidates.length === 0 ? "none was found beside it" : `found ${candidates.sort().join(", ")}`;
  throw new ConversionError(
    checkpointPath,
    `a llama2.c checkpoint needs its tokenizer file: give it with --tokenizer (the \`tokenizer\` option); ${found}`,
  );
}

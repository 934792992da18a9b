/**
 * A SentencePiece BPE vocabulary (as llama2.c tokenizer files and GGUF files carry it: pieces with scores)
 * turned into a Hugging Face `tokenizer.json` that encodes text exactly as llama2.c's `encode` does.
 *
 * llama2.c encodes by splitting the text into code points (unknown ones fall back to `<0xXX>` byte pieces)
 * and then repeatedly merging the adjacent pair whose concatenation is a piece with the highest score,
 * leftmost first on ties. A BPE `tokenizer.json` merges the pair with the lowest merge rank, leftmost first
 * on ties. So every way of splitting a piece into two pieces becomes a merge, ranked by the score of the
 * piece it forms. The one case the two can differ: two different splits of the same piece that both occur
 * in one word at once (llama2.c picks the leftmost, a BPE tokenizer the lower rank); SentencePiece
 * vocabularies give every piece a distinct score and such overlaps are rare.
 */
import { ConversionError } from "./errors.js";

/** SentencePiece's piece types (also GGUF's `tokenizer.ggml.token_type`, 1-based in that order). */
export type PieceKind = "normal" | "unknown" | "control" | "user_defined" | "unused" | "byte";

export interface SentencePiece {
  /** The piece text, with "▁" (U+2581) standing for a space. Byte pieces read `<0xXX>`. */
  text: string;
  score: number;
  kind: PieceKind;
}

export interface SentencePieceVocab {
  /** Pieces by token id. */
  pieces: readonly SentencePiece[];
  bosId: number;
  eosId: number;
  unkId: number;
  padId?: number;
  addBos: boolean;
  addEos: boolean;
  /** SentencePiece's `add_dummy_prefix`: the text is encoded as if it started with a space. */
  addSpacePrefix: boolean;
  /** The longest sequence the model takes. */
  modelMaxLength: number;
}

/** The two tokenizer files of an output directory, as JSON text. */
export interface TokenizerFiles {
  "tokenizer.json": string;
  "tokenizer_config.json": string;
}

const SPACE_MARK = "\u2581";

/**
 * Builds `tokenizer.json` and `tokenizer_config.json` for a SentencePiece vocabulary.
 * @param file the file the vocabulary came from, for error messages.
 */
export function sentencePieceTokenizerFiles(vocab: SentencePieceVocab, file: string): TokenizerFiles {
  const { pieces } = vocab;
  const pieceText = (id: number, role: string): string => {
    if (!Number.isInteger(id) || id < 0 || id >= pieces.length) {
      throw new ConversionError(file, `the ${role} token id ${id} is outside the vocabulary of ${pieces.length} pieces`);
    }
    return pieces[id].text;
  };
  const bos = pieceText(vocab.bosId, "BOS");
  const eos = pieceText(vocab.eosId, "EOS");
  const unk = pieceText(vocab.unkId, "unknown");
  const pad = vocab.padId === undefined ? undefined : pieceText(vocab.padId, "padding");

  // A later duplicate of a piece text cannot be represented (the vocabulary maps text to one id); such
  // duplicates only occur among unused pieces, which encoding never produces.
  const ids = new Map<string, number>();
  pieces.forEach((piece, id) => {
    if (piece.text.length > 0 && !ids.has(piece.text)) ids.set(piece.text, id);
  });

  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: pieces.flatMap((piece, id) =>
      piece.text.length > 0 && (piece.kind === "control" || piece.kind === "unknown" || piece.kind === "user_defined")
        ? [
            {
              id,
              content: piece.text,
              single_word: false,
              lstrip: false,
              rstrip: false,
              normalized: piece.kind === "user_defined",
              special: piece.kind !== "user_defined",
            },
          ]
        : [],
    ),
    normalizer: {
      type: "Sequence",
      normalizers: [
        ...(vocab.addSpacePrefix ? [{ type: "Prepend", prepend: SPACE_MARK }] : []),
        { type: "Replace", pattern: { String: " " }, content: SPACE_MARK },
      ],
    },
    pre_tokenizer: null,
    post_processor: postProcessor(vocab, bos, eos),
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: SPACE_MARK }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        // The space of the dummy prefix is not part of the text.
        ...(vocab.addSpacePrefix ? [{ type: "Strip", content: " ", start: 1, stop: 0 }] : []),
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: unk,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: Object.fromEntries(ids),
      merges: mergesByScore(pieces, ids, file),
    },
  };

  const tokenizerConfig = {
    add_bos_token: vocab.addBos,
    add_eos_token: vocab.addEos,
    bos_token: bos,
    eos_token: eos,
    unk_token: unk,
    ...(pad === undefined ? {} : { pad_token: pad }),
    // Decoding must give back the text exactly, without transformers' space clean-up.
    clean_up_tokenization_spaces: false,
    legacy: false,
    model_max_length: vocab.modelMaxLength,
    tokenizer_class: "LlamaTokenizer",
  };
  return {
    "tokenizer.json": JSON.stringify(tokenizer),
    "tokenizer_config.json": JSON.stringify(tokenizerConfig, null, 2),
  };
}

/**
 * Longest normal piece accepted, in code points. Finding the splits of a piece costs time quadratic in its
 * length, so a corrupt vocabulary with huge pieces is refused; real vocabularies stay far below this.
 */
const MAX_PIECE_CODE_POINTS = 256;

/** Every split of a normal piece into two pieces, highest piece score first. */
function mergesByScore(pieces: readonly SentencePiece[], ids: ReadonlyMap<string, number>, file: string): [string, string][] {
  const merges: { left: string; right: string; score: number }[] = [];
  pieces.forEach((piece, id) => {
    if (piece.kind !== "normal" || ids.get(piece.text) !== id) return;
    const { text } = piece;
    // String offsets after each code point but the last: the possible split points.
    const splits: number[] = [];
    for (const char of text) splits.push((splits.at(-1) ?? 0) + char.length);
    splits.pop();
    if (splits.length >= MAX_PIECE_CODE_POINTS) {
      throw new ConversionError(file, `token ${id} is longer than ${MAX_PIECE_CODE_POINTS} characters`);
    }
    for (const split of splits) {
      const left = text.slice(0, split);
      const right = text.slice(split);
      if (ids.has(left) && ids.has(right)) merges.push({ left, right, score: piece.score });
    }
  });
  // Stable: equal scores keep piece-id order.
  merges.sort((a, b) => b.score - a.score);
  return merges.map(({ left, right }) => [left, right]);
}

/** Adds BOS / EOS around each sequence as the vocabulary asks. */
function postProcessor(vocab: SentencePieceVocab, bos: string, eos: string) {
  const special = (id: string, typeId: number) => ({ SpecialToken: { id, type_id: typeId } });
  const sequence = (id: "A" | "B", typeId: number) => [
    ...(vocab.addBos ? [special(bos, typeId)] : []),
    { Sequence: { id, type_id: typeId } },
    ...(vocab.addEos ? [special(eos, typeId)] : []),
  ];
  const specialTokens: Record<string, { id: string; ids: number[]; tokens: string[] }> = {};
  if (vocab.addBos) specialTokens[bos] = { id: bos, ids: [vocab.bosId], tokens: [bos] };
  if (vocab.addEos) specialTokens[eos] = { id: eos, ids: [vocab.eosId], tokens: [eos] };
  return {
    type: "TemplateProcessing",
    single: sequence("A", 0),
    pair: [...sequence("A", 0), ...sequence("B", 1)],
    special_tokens: specialTokens,
  };
}

/** The special tokens and length a vocabulary read from `tokenizer.json` takes from the model's config. */
export interface VocabularyInfo {
  bosId: number;
  eosId: number;
  vocabSize: number;
  modelMaxLength: number;
}

/**
 * The SentencePiece vocabulary of a Llama-style BPE `tokenizer.json` (byte fallback, "▁" for spaces), for
 * formats that store pieces with scores (GGUF). SentencePiece merges the adjacent pair whose result scores
 * highest, so a piece a merge forms scores minus that merge's rank, and pieces no merge forms score below
 * every merge. Special added tokens become control pieces; ids past the tokenizer's last fill the model's
 * vocabulary as unused pieces.
 * @param file the tokenizer file, for error messages.
 */
export function sentencePieceVocabFromTokenizerJson(tokenizerJson: string, tokenizerConfigJson: string, info: VocabularyInfo, file: string): SentencePieceVocab {
  const fail = (problem: string) => new ConversionError(file, problem);
  type AddedToken = { id: number; content: string; special?: boolean };
  type Tokenizer = {
    model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[]; unk_token?: string | null };
    added_tokens?: AddedToken[];
    normalizer?: unknown;
    pre_tokenizer?: unknown;
  };
  const tokenizer = JSON.parse(tokenizerJson) as Tokenizer;
  const config = JSON.parse(tokenizerConfigJson) as { add_bos_token?: boolean; add_eos_token?: boolean; pad_token?: string | { content?: string } | null };
  const { model } = tokenizer;
  if (model?.type !== "BPE" || typeof model.vocab !== "object" || !Array.isArray(model.merges)) {
    throw fail(`has a ${model?.type ?? "missing"} model; only a BPE tokenizer with a vocab and merges can be stored as SentencePiece pieces`);
  }
  const texts: (string | undefined)[] = new Array(info.vocabSize);
  const special = new Set<number>();
  for (const [text, id] of Object.entries(model.vocab)) texts[id] = text;
  for (const token of tokenizer.added_tokens ?? []) {
    texts[token.id] = token.content;
    if (token.special) special.add(token.id);
  }
  if (texts.length > info.vocabSize) throw fail(`has token ids up to ${texts.length - 1}, but the model's vocabulary has ${info.vocabSize} tokens`);

  const ids = new Map<string, number>();
  texts.forEach((text, id) => {
    if (text !== undefined && !ids.has(text)) ids.set(text, id);
  });
  const rankOf = new Map<number, number>();
  model.merges.forEach((merge, rank) => {
    const [left, right] = typeof merge === "string" ? merge.split(" ") : merge;
    const id = ids.get(left + right);
    if (id !== undefined && !rankOf.has(id)) rankOf.set(id, rank);
  });
  const unmergedScore = -model.merges.length;
  const unkId = model.unk_token == null ? 0 : (ids.get(model.unk_token) ?? 0);
  const pieces: SentencePiece[] = Array.from(texts, (text, id): SentencePiece => {
    if (text === undefined) return { text: `[UNUSED_${id}]`, score: unmergedScore, kind: "unused" };
    const kind: PieceKind =
      id === unkId ? "unknown" : special.has(id) ? "control" : /^<0x[0-9A-F]{2}>$/.test(text) ? "byte" : "normal";
    const rank = rankOf.get(id);
    return { text, score: rank === undefined ? unmergedScore : -rank, kind };
  });
  const padText = typeof config.pad_token === "string" ? config.pad_token : config.pad_token?.content;
  return {
    pieces,
    bosId: info.bosId,
    eosId: info.eosId,
    unkId,
    padId: padText === undefined ? undefined : ids.get(padText),
    addBos: config.add_bos_token ?? true,
    addEos: config.add_eos_token ?? false,
    addSpacePrefix: prependsSpaceMark(tokenizer.normalizer) || prependsSpaceMark(tokenizer.pre_tokenizer),
    modelMaxLength: info.modelMaxLength,
  };
}

/** Whether a normalizer or pre-tokenizer (or a sequence of them) puts "▁" before the text. */
function prependsSpaceMark(step: unknown): boolean {
  if (typeof step !== "object" || step === null) return false;
  const fields = step as { type?: string; prepend?: string; prepend_scheme?: string; add_prefix_space?: boolean; normalizers?: unknown[]; pretokenizers?: unknown[] };
  if (fields.type === "Prepend") return fields.prepend === SPACE_MARK;
  if (fields.type === "Metaspace") return fields.prepend_scheme === undefined ? fields.add_prefix_space !== false : fields.prepend_scheme !== "never";
  return [...(fields.normalizers ?? []), ...(fields.pretokenizers ?? [])].some(prependsSpaceMark);
}

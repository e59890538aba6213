import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { ModelFormatError } from './errors.js';
import type { EncodeOptions, StreamingDecoder, TextTokenizer } from './text-tokenizer.js';

/**
 * Byte-level BPE as a GGUF describes it (tokenizer.ggml.model "gpt2"), tokenizing exactly as llama.cpp
 * does. The GGUF's vocabulary is turned into a Hugging Face tokenizer.json (tokenizerJsonFromSpec), which
 * is what a shard stores and what @huggingface/tokenizers runs to encode. Decoding does not go through the
 * library: it keeps a token -> bytes table so that streaming can hold back a half-finished character.
 */

/** What a GGUF's tokenizer.ggml.* keys give. */
export interface BpeTokenizerSpec {
  /** tokenizer.ggml.model; only 'gpt2' (byte-level BPE) is supported */
  model: string;
  /** tokenizer.ggml.pre: llama.cpp's name for the pre-tokenizer (the regex split before BPE) */
  pre: string;
  tokens: string[];
  /** tokenizer.ggml.token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte */
  tokenTypes: number[];
  /** "left right", in rank order */
  merges: string[];
  bosId: number;
  eosId: number;
  addBos: boolean;
  eotId?: number;
  eomId?: number;
}

/** GGUF token types (llama.cpp's llama_token_type). */
export const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

/**
 * Token texts llama.cpp treats as ending a generation whatever the metadata says (its special_eog_ids
 * text list, the entries that apply to byte-level BPE vocabularies). llama.cpp also makes such a token a
 * control token when the file says otherwise, so these are parsed from text as single tokens too.
 */
const END_MARKERS: ReadonlySet<string> = new Set([
  '<|endoftext|>',
  '<|im_end|>',
  '<|eot_id|>',
  '<|eom_id|>',
  '<|end|>',
  '<end_of_turn>',
  '<|end_of_text|>',
  '</s>',
]);

// The regexes are llama.cpp's (llama-vocab.cpp, llm_tokenizer_bpe), in the Oniguruma syntax tokenizer.json
// uses; @huggingface/tokenizers translates them (notably \s to \p{White_Space}, which, unlike JavaScript's
// \s, is llama.cpp's whitespace set: U+0085 in, U+FEFF out). Each Split keeps matches and the text between
// them as separate pieces, which is how llama.cpp's unicode_regex_split applies a list of regexes.

/** GPT-2's split. llama.cpp's lacks the final `|\s+`, but it keeps unmatched text as pieces, which is the same. */
const GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/** Llama 3's, with the (?i:...) contractions spelled out as llama.cpp does. */
const LLAMA3_REGEX =
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const split = (regex: string) => ({ type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false });
/** After the splits, only the byte -> unicode mapping; no regex of its own. */
const BYTE_LEVEL = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false };
const sequence = (...regexes: string[]) => ({ type: 'Sequence', pretokenizers: [...regexes.map(split), BYTE_LEVEL] });

interface PreTokenization {
  preTokenizer: object;
  /** llama.cpp's ignore_merges: a piece that is already a token is not run through the merges */
  ignoreMerges: boolean;
}

/**
 * tokenizer.ggml.pre -> pre-tokenizer. 'smollm' isolates every \p{N} character first rather than using
 * the Digits pre-tokenizer of SmolLM2's own tokenizer.json: @huggingface/tokenizers' Digits only knows
 * ASCII 0-9, while llama.cpp (and the Rust tokenizers' Digits) split off "²", "½", "٣" as well.
 */
const PRE_TOKENIZATIONS: Record<string, () => PreTokenization> = {
  smollm: () => ({ preTokenizer: sequence('\\p{N}', GPT2_REGEX), ignoreMerges: false }),
  'gpt-2': () => ({ preTokenizer: sequence(GPT2_REGEX), ignoreMerges: false }),
  // Not a name llama.cpp knows ('gpt-2' is), kept because it is the obvious spelling.
  gpt2: () => ({ preTokenizer: sequence(GPT2_REGEX), ignoreMerges: false }),
  // llama.cpp's fallback for BPE files, which is not plain GPT-2: punctuation runs and 3-digit groups first.
  default: () => ({
    preTokenizer: sequence('[\\p{P}\\$\\+<=>\\^~\\|]+', GPT2_REGEX, '\\p{N}+', '[0-9][0-9][0-9]'),
    ignoreMerges: false,
  }),
  'llama-bpe': () => ({ preTokenizer: sequence(LLAMA3_REGEX), ignoreMerges: true }),
  llama3: () => ({ preTokenizer: sequence(LLAMA3_REGEX), ignoreMerges: true }),
  'llama-v3': () => ({ preTokenizer: sequence(LLAMA3_REGEX), ignoreMerges: true }),
};

/** Pre names whose files llama.cpp reads with add_bos_token defaulting to true. */
const ADD_BOS_BY_DEFAULT: ReadonlySet<string> = new Set(['llama-bpe', 'llama3', 'llama-v3']);

const DEFAULT_SOURCE = 'GGUF tokenizer metadata';

function isSpecial(spec: BpeTokenizerSpec, id: number): boolean {
  const type = spec.tokenTypes[id];
  return (
    type === TOKEN_TYPE.control ||
    type === TOKEN_TYPE.userDefined ||
    type === TOKEN_TYPE.unknown ||
    END_MARKERS.has(spec.tokens[id])
  );
}

function checkId(file: string, what: string, id: number | undefined, n: number, optional = false): void {
  if (optional && id === undefined) return;
  if (!Number.isInteger(id) || id! < 0 || id! >= n) {
    throw new ModelFormatError(file, `${what} a token id in [0, ${n})`, String(id));
  }
}

function checkSpec(spec: BpeTokenizerSpec, file: string): void {
  if (spec.model !== 'gpt2') {
    throw new ModelFormatError(file, "tokenizer.ggml.model 'gpt2' (byte-level BPE)", `'${spec.model}'`);
  }
  if (!Object.hasOwn(PRE_TOKENIZATIONS, spec.pre)) {
    throw new ModelFormatError(
      file,
      `tokenizer.ggml.pre one of ${Object.keys(PRE_TOKENIZATIONS).join(', ')}`,
      `'${spec.pre}'`,
    );
  }
  const n = spec.tokens.length;
  if (n === 0) throw new ModelFormatError(file, 'a non-empty tokenizer.ggml.tokens', 'no tokens');
  if (spec.tokenTypes.length !== n) {
    throw new ModelFormatError(
      file,
      `tokenizer.ggml.token_type with one entry per token (${n})`,
      `${spec.tokenTypes.length} entries`,
    );
  }
  checkId(file, 'tokenizer.ggml.bos_token_id', spec.bosId, n);
  checkId(file, 'tokenizer.ggml.eos_token_id', spec.eosId, n);
  checkId(file, 'tokenizer.ggml.eot_token_id', spec.eotId, n, true);
  checkId(file, 'tokenizer.ggml.eom_token_id', spec.eomId, n, true);
}

/**
 * Ids that end a generation, as llama.cpp collects them: EOS, EOT and EOM when given, and every token whose
 * text is a known end marker. Sorted. (llama.cpp also stops on FIM repo/separator tokens such as
 * "<reponame>"; those matter only to code-infill prompts, so they are left out here.)
 */
export function endOfGenerationIds(spec: BpeTokenizerSpec, file = DEFAULT_SOURCE): number[] {
  checkSpec(spec, file);
  const ids = new Set<number>([spec.eosId]);
  if (spec.eotId !== undefined) ids.add(spec.eotId);
  if (spec.eomId !== undefined) ids.add(spec.eomId);
  spec.tokens.forEach((t, id) => {
    if (END_MARKERS.has(t)) ids.add(id);
  });
  return [...ids].sort((a, b) => a - b);
}

/**
 * A Hugging Face tokenizer.json for the spec: BPE with the GGUF's vocabulary and merges, the pre-tokenizer
 * llama.cpp uses for `pre`, control/user-defined/unknown tokens as special added tokens (so that their text
 * becomes their single id, like llama.cpp with parse_special), byte-level decoder. Deterministic: the same
 * spec gives the same JSON text, and nothing outside it is needed to tokenize.
 */
export function tokenizerJsonFromSpec(spec: BpeTokenizerSpec, file = DEFAULT_SOURCE): object {
  checkSpec(spec, file);
  const { preTokenizer, ignoreMerges } = PRE_TOKENIZATIONS[spec.pre]();
  // A null prototype, so that a token named "__proto__" is a key like any other.
  const vocab: Record<string, number> = Object.create(null);
  const added: object[] = [];
  spec.tokens.forEach((token, id) => {
    // llama.cpp renames empty tokens the same way.
    const text = token === '' ? `[EMPTY_${id}]` : token;
    if (Object.hasOwn(vocab, text)) {
      // llama.cpp refuses these too: one text cannot encode to two ids.
      throw new ModelFormatError(file, 'distinct tokenizer.ggml.tokens', `'${text}' at ids ${vocab[text]} and ${id}`);
    }
    vocab[text] = id;
    if (isSpecial(spec, id)) {
      added.push({
        id,
        content: text,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      });
    }
  });
  // Pairs rather than "a b" strings: a byte-level symbol never holds a space, but this way no reader has
  // to split. The split point is llama.cpp's: the first space after the first character.
  const merges = spec.merges.map((m, i) => {
    const at = m.indexOf(' ', 1);
    if (at < 0) throw new ModelFormatError(file, `tokenizer.ggml.merges[${i}] as "left right"`, JSON.stringify(m));
    return [m.slice(0, at), m.slice(at + 1)];
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: ignoreMerges,
      vocab,
      merges,
    },
  };
}

/**
 * The spec from a GGUF's metadata (as @huggingface/gguf returns it). Defaults are llama.cpp's: every token
 * normal without token_type, pre 'default' when absent, add_bos_token true only for Llama 3 files.
 */
export function bpeSpecFromGguf(metadata: Record<string, unknown>, file: string): BpeTokenizerSpec {
  const strings = (key: string): string[] => {
    const v = metadata[key];
    if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) {
      throw new ModelFormatError(file, `${key} as an array of strings`, v === undefined ? 'no such key' : typeof v);
    }
    return v;
  };
  const id = (key: string, required: boolean): number | undefined => {
    const v = metadata[key];
    if (v === undefined && !required) return undefined;
    if (typeof v !== 'number' && typeof v !== 'bigint') {
      throw new ModelFormatError(file, `${key} as an integer`, v === undefined ? 'no such key' : typeof v);
    }
    return Number(v);
  };
  const model = metadata['tokenizer.ggml.model'];
  const pre = metadata['tokenizer.ggml.pre'] ?? 'default';
  if (typeof model !== 'string') throw new ModelFormatError(file, 'tokenizer.ggml.model as a string', typeof model);
  if (typeof pre !== 'string') throw new ModelFormatError(file, 'tokenizer.ggml.pre as a string', typeof pre);
  const tokens = strings('tokenizer.ggml.tokens');
  const types = metadata['tokenizer.ggml.token_type'];
  let tokenTypes: number[];
  if (types === undefined) tokenTypes = tokens.map(() => TOKEN_TYPE.normal);
  else if (Array.isArray(types) && types.every((t) => typeof t === 'number')) tokenTypes = types;
  else throw new ModelFormatError(file, 'tokenizer.ggml.token_type as an array of integers', typeof types);
  const addBos = metadata['tokenizer.ggml.add_bos_token'] ?? ADD_BOS_BY_DEFAULT.has(pre);
  if (typeof addBos !== 'boolean') {
    throw new ModelFormatError(file, 'tokenizer.ggml.add_bos_token as a boolean', typeof addBos);
  }
  const spec: BpeTokenizerSpec = {
    model,
    pre,
    tokens,
    tokenTypes,
    merges: strings('tokenizer.ggml.merges'),
    bosId: id('tokenizer.ggml.bos_token_id', true)!,
    eosId: id('tokenizer.ggml.eos_token_id', true)!,
    addBos,
  };
  const eot = id('tokenizer.ggml.eot_token_id', false);
  const eom = id('tokenizer.ggml.eom_token_id', false);
  if (eot !== undefined) spec.eotId = eot;
  if (eom !== undefined) spec.eomId = eom;
  checkSpec(spec, file);
  return spec;
}

/** GPT-2's byte -> printable character table, inverted: char code -> byte, -1 outside the table. */
const UNICODE_TO_BYTE: Int16Array = (() => {
  const table = new Int16Array(512).fill(-1);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[printable ? b : 256 + extra++] = b;
  }
  return table;
})();

const utf8Encoder = new TextEncoder();
// ignoreBOM: a leading U+FEFF is content, not a marker, when decoding generated text.
const newUtf8Decoder = () => new TextDecoder('utf-8', { ignoreBOM: true });

export interface BpeTokenizerMeta {
  bosId: number;
  eosId: number;
  addBos: boolean;
  endIds: number[];
}

interface TokenizerJsonShape {
  model: { type: unknown; vocab: unknown; merges: unknown };
  added_tokens: unknown;
}

function checkJsonShape(json: object, file: string): asserts json is TokenizerJsonShape {
  const j = json as Partial<TokenizerJsonShape>;
  const m = j.model;
  if (!m || m.type !== 'BPE' || typeof m.vocab !== 'object' || m.vocab === null || !Array.isArray(m.merges)) {
    throw new ModelFormatError(
      file,
      'a tokenizer.json with a BPE model (vocab, merges)',
      m ? `model type ${String(m.type)}` : 'no model',
    );
  }
  if (!Array.isArray(j.added_tokens)) {
    throw new ModelFormatError(file, 'a tokenizer.json with an added_tokens array', typeof j.added_tokens);
  }
}

export class BpeTokenizer implements TextTokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly addBos: boolean;
  readonly endIds: ReadonlySet<number>;
  /** Token id -> the bytes it decodes to: pieceBytes[pieceStart[id] .. pieceStart[id + 1]]. Empty for end ids. */
  private readonly pieceBytes: Uint8Array;
  private readonly pieceStart: Uint32Array;

  private constructor(
    private readonly hf: HfTokenizer,
    meta: BpeTokenizerMeta,
    file: string,
  ) {
    const names = hf.model?.vocab ?? [];
    const n = names.length;
    this.vocabSize = n;
    checkId(file, 'bosId', meta.bosId, n);
    checkId(file, 'eosId', meta.eosId, n);
    meta.endIds.forEach((id) => checkId(file, 'end id', id, n));
    this.bosId = meta.bosId;
    this.eosId = meta.eosId;
    this.addBos = meta.addBos;
    this.endIds = new Set(meta.endIds);

    // Added tokens are literal text; everything else is byte-level: one character per byte.
    const literal = new Set(hf.get_added_tokens_decoder().keys());
    let bytes = new Uint8Array(8 * n);
    const start = new Uint32Array(n + 1);
    let off = 0;
    for (let id = 0; id < n; id++) {
      start[id] = off;
      const name = names[id];
      if (name === undefined) {
        throw new ModelFormatError(file, `a vocabulary with every id in [0, ${n})`, `no token with id ${id}`);
      }
      if (this.endIds.has(id)) continue;
      if (off + 4 * name.length > bytes.length) {
        const grown = new Uint8Array(2 * bytes.length + 4 * name.length);
        grown.set(bytes.subarray(0, off));
        bytes = grown;
      }
      if (literal.has(id)) {
        off += utf8Encoder.encodeInto(name, bytes.subarray(off)).written;
        continue;
      }
      for (let i = 0; i < name.length; i++) {
        const code = name.charCodeAt(i);
        const b = code < UNICODE_TO_BYTE.length ? UNICODE_TO_BYTE[code] : -1;
        if (b >= 0) {
          bytes[off++] = b;
        } else {
          // Not byte-level text (a vocabulary that mixes in raw tokens): its own UTF-8, whole code point.
          const cp = name.codePointAt(i)!;
          const ch = String.fromCodePoint(cp);
          off += utf8Encoder.encodeInto(ch, bytes.subarray(off)).written;
          i += ch.length - 1;
        }
      }
    }
    start[n] = off;
    this.pieceBytes = bytes.slice(0, off);
    this.pieceStart = start;
  }

  /**
   * `tokenizerJson`: what tokenizerJsonFromSpec built (or a shard's tokenizer.json, parsed). The ids in
   * `meta` come from the same spec: endOfGenerationIds(spec) for endIds.
   */
  static fromJson(tokenizerJson: object, meta: BpeTokenizerMeta, file: string): BpeTokenizer {
    checkJsonShape(tokenizerJson, file);
    let hf: HfTokenizer;
    try {
      // No clean-up of spaces: decode must give back exactly the text that was encoded.
      hf = new HfTokenizer(tokenizerJson, { clean_up_tokenization_spaces: false });
    } catch (e) {
      throw new ModelFormatError(
        file,
        'a tokenizer.json @huggingface/tokenizers accepts',
        e instanceof Error ? e.message : String(e),
      );
    }
    return new BpeTokenizer(hf, meta, file);
  }

  /** Control tokens written in the text become their single ids; no BOS unless asked (callers pass addBos). */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const ids = text.length > 0 ? this.hf.encode(text, { add_special_tokens: false }).ids : [];
    if (opts.bos) ids.unshift(this.bosId);
    if (opts.eos) ids.push(this.eosId);
    return ids;
  }

  /** The bytes of every token, as one string. End-of-generation tokens add nothing; other control tokens their text. */
  decode(tokens: number[]): string {
    let total = 0;
    for (const t of tokens) {
      this.checkToken(t);
      total += this.pieceStart[t + 1] - this.pieceStart[t];
    }
    const all = new Uint8Array(total);
    let off = 0;
    for (const t of tokens) {
      const piece = this.piece(t);
      all.set(piece, off);
      off += piece.length;
    }
    return newUtf8Decoder().decode(all);
  }

  /**
   * decode() one token at a time: a character whose bytes span several tokens comes out with its last byte.
   * `prev` is not needed: byte-level pieces carry their own spaces, so a token decodes the same anywhere.
   */
  createDecoder(_opts: { prev?: number } = {}): StreamingDecoder {
    const decoder = newUtf8Decoder();
    return {
      push: (token: number): string => {
        this.checkToken(token);
        return decoder.decode(this.piece(token), { stream: true });
      },
      flush: (): string => decoder.decode(),
    };
  }

  private piece(token: number): Uint8Array {
    return this.pieceBytes.subarray(this.pieceStart[token], this.pieceStart[token + 1]);
  }

  private checkToken(token: number): void {
    if (!Number.isInteger(token) || token < 0 || token >= this.vocabSize) {
      throw new RangeError(`token id ${token} outside the vocabulary [0, ${this.vocabSize})`);
    }
  }
}

import { ModelFormatError } from './errors.js';
import type { EncodeOptions, StreamingDecoder, TextTokenizer } from './text-tokenizer.js';

/** Upper bound for max_token_length; real SentencePiece exports stay well under 64. */
const MAX_SANE_TOKEN_LENGTH = 1024;

const utf8Encoder = new TextEncoder();

/**
 * A byte string holds one byte per UTF-16 code unit (0..255). Lookups run on these rather than on
 * decoded text so that matching is byte-exact like run.c's strcmp, even for pieces or inputs that
 * are not valid UTF-8 (decoding those would fold different byte sequences onto U+FFFD).
 */
function toByteString(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

// ignoreBOM: a leading U+FEFF is content, not a marker, when decoding generated text.
const newUtf8Decoder = () => new TextDecoder('utf-8', { ignoreBOM: true });

export type { EncodeOptions, StreamingDecoder } from './text-tokenizer.js';

/** run.c's fixed special ids; a shard manifest records the ids its model uses. */
export const LLAMA2C_SPECIAL_IDS = { bosId: 1, eosId: 2 } as const;

/** llama2.c's tokenizer (tokenizer.bin / tok512.bin): SentencePiece BPE exported as scored pieces. */
export class Tokenizer implements TextTokenizer {
  readonly addBos = true;
  /** A llama2.c story ends with BOS (the next story's start) or EOS. */
  readonly endIds: ReadonlySet<number>;
  /** Pieces as text, for display. Invalid UTF-8 in a piece shows as U+FFFD here only. */
  readonly vocab: string[];
  readonly scores: Float32Array;
  readonly maxTokenLength: number;
  private readonly pieceBytes: Uint8Array[];
  /** Byte-string piece -> id; replaces run.c's sorted vocab + bsearch. */
  private readonly lookup: Map<string, number>;
  private readonly pieceKeys: string[];
  /** For `<0xHH>` tokens the raw byte HH, else -1. */
  private readonly byteValue: Int16Array;
  private readonly spaceId: number;

  private constructor(
    pieces: Uint8Array[],
    scores: Float32Array,
    maxTokenLength: number,
    private readonly file: string,
    readonly bosId: number,
    readonly eosId: number,
  ) {
    this.endIds = new Set([bosId, eosId]);
    const decoder = newUtf8Decoder();
    this.pieceBytes = pieces;
    this.scores = scores;
    this.maxTokenLength = maxTokenLength;
    this.vocab = pieces.map((p) => decoder.decode(p));
    this.pieceKeys = pieces.map(toByteString);
    this.lookup = new Map();
    // If a piece occurs twice, the lowest id wins: deterministic, unlike bsearch over duplicates.
    this.pieceKeys.forEach((k, id) => {
      if (!this.lookup.has(k)) this.lookup.set(k, id);
    });
    this.byteValue = new Int16Array(pieces.length).fill(-1);
    this.vocab.forEach((p, id) => {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(p);
      if (m) this.byteValue[id] = parseInt(m[1], 16);
    });
    this.spaceId = this.lookup.get(' ') ?? -1;
  }

  get vocabSize(): number {
    return this.pieceBytes.length;
  }

  /**
   * Layout: int32 max_token_length, then per token float32 score, int32 byte length, raw bytes.
   * `vocabSize` comes from the model header because the file does not record it.
   */
  static fromLlama2c(
    bytes: Uint8Array,
    vocabSize: number,
    file: string,
    ids: { bosId: number; eosId: number } = LLAMA2C_SPECIAL_IDS,
  ): Tokenizer {
    if (!Number.isSafeInteger(vocabSize) || vocabSize <= 0) {
      throw new ModelFormatError(file, 'a positive vocabSize from the model header', String(vocabSize));
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes.length < 4) {
      throw new ModelFormatError(
        file,
        'a llama2.c tokenizer starting with an int32 max_token_length (4 bytes)',
        `${bytes.length} bytes`,
      );
    }
    const maxTokenLength = view.getInt32(0, true);
    if (maxTokenLength <= 0 || maxTokenLength > MAX_SANE_TOKEN_LENGTH) {
      throw new ModelFormatError(
        file,
        `max_token_length between 1 and ${MAX_SANE_TOKEN_LENGTH} in the first 4 bytes`,
        String(maxTokenLength),
      );
    }
    const pieces: Uint8Array[] = [];
    const scores = new Float32Array(vocabSize);
    let off = 4;
    for (let id = 0; id < vocabSize; id++) {
      if (off + 8 > bytes.length) {
        throw new ModelFormatError(
          file,
          `${vocabSize} tokens (the model's vocab_size)`,
          off === bytes.length
            ? `only ${id} tokens before the end of the file at byte ${off}`
            : `the file truncated inside the score/length of token ${id} at byte ${off} of ${bytes.length}`,
        );
      }
      scores[id] = view.getFloat32(off, true);
      const len = view.getInt32(off + 4, true);
      off += 8;
      if (len < 0 || len > maxTokenLength) {
        throw new ModelFormatError(
          file,
          `token ${id} byte length between 0 and max_token_length ${maxTokenLength}`,
          `${len} at byte ${off - 4}`,
        );
      }
      if (off + len > bytes.length) {
        throw new ModelFormatError(
          file,
          `token ${id} piece of ${len} bytes at byte ${off}`,
          `the file ending at byte ${bytes.length}, ${off + len - bytes.length} bytes short`,
        );
      }
      pieces.push(bytes.slice(off, off + len));
      off += len;
    }
    if (off !== bytes.length) {
      throw new ModelFormatError(
        file,
        `the file to end after ${vocabSize} tokens at byte ${off} (is it the tokenizer for this model?)`,
        `${bytes.length} bytes`,
      );
    }
    return new Tokenizer(pieces, scores, maxTokenLength, file, ids.bosId, ids.eosId);
  }

  /**
   * run.c's encode(): dummy-prefix " ", one token per UTF-8 code point (or its bytes + 3 when the
   * code point has no piece), then greedily merge the best-scoring adjacent pair until none merges.
   *
   * The merge loop uses a heap over a linked list instead of run.c's O(n^2) rescans. It picks the
   * same pair each step: highest score, ties to the leftmost pair (run.c uses a strict `>` while
   * scanning left to right), and left-to-right order of live tokens equals order of original
   * positions, so the heap key (score desc, left position asc) reproduces run.c's choice.
   */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const tokens: number[] = [];
    const bytes = utf8Encoder.encode(text);
    if (bytes.length > 0) {
      if (this.spaceId < 0) {
        throw new ModelFormatError(this.file, 'a " " piece for the dummy prefix', 'none');
      }
      tokens.push(this.spaceId);
    }
    // Mirrors run.c's byte loop, including its cap of 4 bytes per "code point" on malformed input.
    let start = 0;
    for (let i = 0; i < bytes.length; i++) {
      if ((bytes[i] & 0xc0) !== 0x80) start = i;
      const len = i - start + 1;
      const nextIsContinuation = i + 1 < bytes.length && (bytes[i + 1] & 0xc0) === 0x80;
      if (nextIsContinuation && len < 4) continue;
      const cp = bytes.subarray(start, i + 1);
      const id = this.lookup.get(toByteString(cp));
      if (id !== undefined) tokens.push(id);
      else for (const b of cp) tokens.push(b + 3);
      start = i + 1;
    }
    const merged = this.mergePairs(tokens);
    if (opts.bos) merged.unshift(this.bosId);
    if (opts.eos) merged.push(this.eosId);
    return merged;
  }

  private mergePairs(tokens: number[]): number[] {
    const n = tokens.length;
    if (n < 2) return tokens.slice();
    const id = Int32Array.from(tokens);
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    // Candidates carry the ids they were computed from; a candidate is stale once either side
    // has been merged into something else.
    const heap = new MergeHeap();
    const consider = (left: number) => {
      const right = next[left];
      if (right < 0) return;
      const mergedId = this.lookup.get(this.pieceKeys[id[left]] + this.pieceKeys[id[right]]);
      // run.c only accepts scores above its -1e10 starting best.
      if (mergedId === undefined || !(this.scores[mergedId] > -1e10)) return;
      heap.push({ score: this.scores[mergedId], left, right, leftId: id[left], rightId: id[right], mergedId });
    };
    for (let i = 0; i + 1 < n; i++) consider(i);
    for (let c = heap.pop(); c; c = heap.pop()) {
      if (!alive[c.left] || !alive[c.right] || next[c.left] !== c.right) continue;
      if (id[c.left] !== c.leftId || id[c.right] !== c.rightId) continue;
      id[c.left] = c.mergedId;
      alive[c.right] = 0;
      next[c.left] = next[c.right];
      if (next[c.right] >= 0) prev[next[c.right]] = c.left;
      if (prev[c.left] >= 0) consider(prev[c.left]);
      consider(c.left);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]) out.push(id[i]);
    return out;
  }

  /**
   * run.c's decode(): the piece for `token` as raw bytes, with the leading space dropped right after
   * BOS (SentencePiece's dummy prefix) and `<0xHH>` tokens turned into the single byte HH.
   */
  decodePieceBytes(prev: number, token: number): Uint8Array {
    this.checkId(token);
    const byte = this.byteValue[token];
    if (byte >= 0) return Uint8Array.of(byte);
    let piece = this.pieceBytes[token];
    if (prev === this.bosId && piece[0] === 0x20) {
      piece = piece.subarray(1);
      // run.c checks for <0xHH> after the strip; " <0xHH>" pieces do not occur in practice.
      const b = /^<0x([0-9A-Fa-f]{2})>$/.exec(toByteString(piece));
      if (b) return Uint8Array.of(parseInt(b[1], 16));
    }
    // A copy, so callers cannot corrupt the vocabulary.
    return piece.slice();
  }

  /**
   * decodePieceBytes as text. A lone byte token >= 0x80 is only part of a character and comes out
   * as U+FFFD here; use decode() or createDecoder() to assemble characters across tokens.
   */
  decodePiece(prev: number, token: number): string {
    return newUtf8Decoder().decode(this.decodePieceBytes(prev, token));
  }

  /** BOS and EOS emit no text (SentencePiece drops control tokens) but BOS still strips the space after it. */
  private emits(token: number): boolean {
    return token !== this.bosId && token !== this.eosId;
  }

  /**
   * Text of a token sequence. Decoding starts as if after BOS, so the dummy-prefix space that
   * encode() adds is removed and decode(encode(s)) === s.
   */
  decode(tokens: number[]): string {
    const parts: Uint8Array[] = [];
    let total = 0;
    let prev = this.bosId;
    for (const t of tokens) {
      if (this.emits(t)) {
        const p = this.decodePieceBytes(prev, t);
        parts.push(p);
        total += p.length;
      } else {
        this.checkId(t);
      }
      prev = t;
    }
    const all = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      all.set(p, off);
      off += p.length;
    }
    return newUtf8Decoder().decode(all);
  }

  /**
   * Incremental decode() for streaming: each push returns only complete characters, holding back
   * the bytes of a character that byte-fallback tokens have not finished yet.
   */
  createDecoder(opts: { prev?: number } = {}): StreamingDecoder {
    const decoder = newUtf8Decoder();
    let prev = opts.prev ?? this.bosId;
    return {
      push: (token: number): string => {
        const text = this.emits(token) ? decoder.decode(this.decodePieceBytes(prev, token), { stream: true }) : '';
        if (!this.emits(token)) this.checkId(token);
        prev = token;
        return text;
      },
      flush: (): string => decoder.decode(),
    };
  }

  private checkId(token: number): void {
    if (!Number.isInteger(token) || token < 0 || token >= this.pieceBytes.length) {
      throw new RangeError(`token id ${token} outside the vocabulary [0, ${this.pieceBytes.length})`);
    }
  }
}

interface MergeCandidate {
  score: number;
  left: number;
  right: number;
  leftId: number;
  rightId: number;
  mergedId: number;
}

/** Binary max-heap on (score desc, left position asc). */
class MergeHeap {
  private items: MergeCandidate[] = [];

  private before(a: MergeCandidate, b: MergeCandidate): boolean {
    return a.score > b.score || (a.score === b.score && a.left < b.left);
  }

  push(c: MergeCandidate): void {
    const h = this.items;
    h.push(c);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }

  pop(): MergeCandidate | undefined {
    const h = this.items;
    if (h.length === 0) return undefined;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < h.length && this.before(h[l], h[best])) best = l;
        if (r < h.length && this.before(h[r], h[best])) best = r;
        if (best === i) break;
        [h[i], h[best]] = [h[best], h[i]];
        i = best;
      }
    }
    return top;
  }
}

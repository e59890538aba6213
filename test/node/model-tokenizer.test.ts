import { describe, expect, it } from 'vitest';
import { createRng } from '../../src/model/prng.js';
import { Tokenizer } from '../../src/model/tokenizer.js';
import { expectFormatError } from '../support/format-errors.js';
import { devStories, readBytes, TOK512_BIN } from '../support/paths.js';

const FILE = 'tok512.bin';
const bytes = readBytes(TOK512_BIN);
const tok = Tokenizer.fromLlama2c(bytes, 512, FILE);

/**
 * A literal port of run.c's encode() (rescan every pair on every merge) to check the heap-based
 * merge against. Works on text pieces, which is equivalent for valid UTF-8 input and vocab.
 */
function naiveEncode(t: Tokenizer, text: string): number[] {
  const ids = new Map<string, number>();
  t.vocab.forEach((p, i) => {
    if (!ids.has(p)) ids.set(p, i);
  });
  const tokens: number[] = [];
  if (text.length > 0) tokens.push(ids.get(' ')!);
  for (const ch of text) {
    const id = ids.get(ch);
    if (id !== undefined) tokens.push(id);
    else for (const b of new TextEncoder().encode(ch)) tokens.push(b + 3);
  }
  for (;;) {
    let bestScore = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i < tokens.length - 1; i++) {
      const id = ids.get(t.vocab[tokens[i]] + t.vocab[tokens[i + 1]]);
      if (id !== undefined && t.scores[id] > bestScore) {
        bestScore = t.scores[id];
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) break;
    tokens.splice(bestIdx, 2, bestId);
  }
  return tokens;
}

/** Builds a tokenizer file from pieces, for the malformed-file cases. */
function tokenizerFile(maxLen: number, pieces: Array<{ score: number; bytes: number[]; len?: number }>): Uint8Array {
  const size = 4 + pieces.reduce((s, p) => s + 8 + p.bytes.length, 0);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setInt32(0, maxLen, true);
  let off = 4;
  for (const p of pieces) {
    view.setFloat32(off, p.score, true);
    view.setInt32(off + 4, p.len ?? p.bytes.length, true);
    out.set(p.bytes, off + 8);
    off += 8 + p.bytes.length;
  }
  return out;
}

describe('tok512 layout', () => {
  it('matches the facts in SOURCE.md', () => {
    expect(tok.vocab).toHaveLength(512);
    expect(tok.maxTokenLength).toBe(7);
    expect(tok.bosId).toBe(1);
    expect(tok.eosId).toBe(2);
    expect(tok.vocab[0]).toBe('<unk>');
    expect(tok.vocab[1]).toBe('\n<s>\n');
    expect(tok.vocab[2]).toBe('\n</s>\n');
    expect(tok.vocab[3]).toBe('<0x00>');
    expect(tok.vocab[258]).toBe('<0xFF>');
    expect(tok.vocab[410]).toBe(' ');
    expect(tok.scores[300]).toBe(-(300 - 259));
  });
});

describe('encode', () => {
  it('handles the empty string and BOS/EOS flags', () => {
    expect(tok.encode('')).toEqual([]);
    expect(tok.encode('', { bos: true })).toEqual([1]);
    expect(tok.encode('', { bos: true, eos: true })).toEqual([1, 2]);
  });

  it('adds the dummy-prefix space (id 410) and byte-falls-back a newline to 13', () => {
    expect(tok.encode(' ')).toEqual([410, 410]);
    expect(tok.encode('\n')).toEqual([410, 13]);
    expect(tok.encode('a\nb', { bos: true }).slice(0, 1)).toEqual([1]);
    expect(tok.encode('a\nb')).toContain(13);
    const once = tok.encode('Once upon a time', { bos: true, eos: true });
    expect(once[0]).toBe(1);
    expect(once.at(-1)).toBe(2);
    // " Once" is a merged piece, so the dummy prefix is absorbed into the first word.
    expect(tok.vocab[once[1]].startsWith(' ')).toBe(true);
  });

  it('uses byte fallback (+3) for code points without a piece', () => {
    expect(tok.encode('😀')).toEqual([410, 0xf0 + 3, 0x9f + 3, 0x98 + 3, 0x80 + 3]);
  });

  it('matches a literal port of run.c encode() on the dev stories and random text', () => {
    for (const line of devStories()) expect(tok.encode(line)).toEqual(naiveEncode(tok, line));
    const rng = createRng(1234);
    const alphabet = [...'aaaeeeiioou   tthhnnssrrdl.,!?\'"\n\t-ABCTé–ü日本😀'];
    for (let n = 0; n < 200; n++) {
      let s = '';
      const len = Math.floor(rng.next() * 60);
      for (let i = 0; i < len; i++) s += alphabet[Math.floor(rng.next() * alphabet.length)];
      expect(tok.encode(s), JSON.stringify(s)).toEqual(naiveEncode(tok, s));
    }
  });

  it('matches run.c byte handling on lone surrogates (encoded as U+FFFD bytes)', () => {
    expect(tok.encode('\ud800')).toEqual(tok.encode('\ufffd'));
  });
});

describe('decode', () => {
  it('round-trips every dev story exactly', () => {
    const stories = devStories();
    expect(stories.length).toBeGreaterThan(0);
    for (const line of stories) expect(tok.decode(tok.encode(line))).toBe(line);
  });

  it('round-trips whitespace, control bytes and multi-byte text', () => {
    for (const s of [' ', '  leading', 'trailing ', 'a\nb\n\nc', '\t\u0000x', 'café – 😀', '\ufeffbom', '日本語']) {
      expect(tok.decode(tok.encode(s))).toBe(s);
      expect(tok.decode(tok.encode(s, { bos: true, eos: true }))).toBe(s);
    }
  });

  it('decodePiece follows run.c: space stripped after BOS, <0xHH> becomes the byte', () => {
    const [, onceId] = tok.encode('Once', { bos: true });
    expect(tok.decodePiece(1, onceId)).toBe('Once');
    expect(tok.decodePiece(5, onceId)).toBe(' Once');
    expect(tok.decodePiece(1, 13)).toBe('\n');
    expect(tok.decodePiece(1, 0x41 + 3)).toBe('A');
    expect(Array.from(tok.decodePieceBytes(1, 0xf0 + 3))).toEqual([0xf0]);
    expect(tok.decodePiece(1, 410)).toBe('');
    expect(() => tok.decodePiece(1, 512)).toThrow(RangeError);
  });

  it('joins BOS-separated stories without stray spaces', () => {
    const ids = [...tok.encode('One.', { bos: true }), ...tok.encode('Two.', { bos: true })];
    expect(tok.decode(ids)).toBe('One.Two.');
  });

  it('streams the same text as decode without splitting characters', () => {
    const text = 'café – 😀 and 日本 😀😀';
    const ids = tok.encode(text, { bos: true });
    const dec = tok.createDecoder();
    const chunks = ids.map((id) => dec.push(id));
    chunks.push(dec.flush());
    expect(chunks.join('')).toBe(tok.decode(ids));
    expect(chunks.join('')).toBe(text);
    for (const c of chunks) expect(c).not.toContain('\ufffd');
    // The emoji arrives as four byte tokens: three pushes hold bytes back, the fourth emits it.
    expect(chunks.filter((c) => c === '').length).toBeGreaterThanOrEqual(3);
    expect(chunks).toContain('😀');
  });

  it('flush() surfaces an unfinished character as U+FFFD', () => {
    const dec = tok.createDecoder();
    expect(dec.push(0xf0 + 3)).toBe('');
    expect(dec.flush()).toBe('\ufffd');
  });
});

describe('tokenizer format errors', () => {
  it('rejects a file too short for max_token_length', () => {
    expectFormatError(
      () => Tokenizer.fromLlama2c(new Uint8Array(2), 512, FILE),
      FILE,
      'max_token_length',
      'found 2 bytes',
    );
  });

  it('rejects a nonsense max_token_length', () => {
    for (const bad of [0, -7, 1 << 20]) {
      const copy = bytes.slice();
      new DataView(copy.buffer).setInt32(0, bad, true);
      expectFormatError(() => Tokenizer.fromLlama2c(copy, 512, FILE), FILE, 'max_token_length', `found ${bad}`);
    }
  });

  it('rejects a piece that runs past the end of the file', () => {
    // Cut inside the last piece (" the..."-style pieces are a few bytes long).
    expectFormatError(
      () => Tokenizer.fromLlama2c(bytes.subarray(0, bytes.length - 1), 512, FILE),
      FILE,
      'token 511 piece of',
      'bytes short',
    );
  });

  it('rejects a file truncated inside a score/length pair', () => {
    expectFormatError(
      () => Tokenizer.fromLlama2c(bytes.subarray(0, 4 + 8 + 5 + 3), 512, FILE),
      'truncated inside the score/length of token 1',
    );
  });

  it('rejects fewer tokens than the model vocab_size', () => {
    expectFormatError(() => Tokenizer.fromLlama2c(bytes, 600, FILE), FILE, 'expected 600 tokens', 'only 512 tokens');
  });

  it('rejects trailing bytes (a tokenizer for a bigger vocabulary)', () => {
    expectFormatError(
      () => Tokenizer.fromLlama2c(bytes, 500, FILE),
      FILE,
      'after 500 tokens',
      `found ${bytes.length} bytes`,
    );
  });

  it('rejects piece lengths that are negative or exceed max_token_length', () => {
    const neg = tokenizerFile(3, [{ score: 0, bytes: [], len: -1 }]);
    expectFormatError(() => Tokenizer.fromLlama2c(neg, 1, 'neg.bin'), 'neg.bin', 'token 0 byte length', 'found -1');
    const long = tokenizerFile(2, [{ score: 0, bytes: [0x61, 0x62, 0x63] }]);
    expectFormatError(() => Tokenizer.fromLlama2c(long, 1, 'long.bin'), 'max_token_length 2', 'found 3');
  });

  it('accepts a minimal well-formed file', () => {
    const t = Tokenizer.fromLlama2c(
      tokenizerFile(2, [
        { score: 0, bytes: [0x3c, 0x75] },
        { score: 0, bytes: [0x61] },
      ]),
      2,
      'mini.bin',
    );
    expect(t.vocab).toEqual(['<u', 'a']);
  });
});

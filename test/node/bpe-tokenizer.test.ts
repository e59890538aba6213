import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gguf } from '@huggingface/gguf';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  BpeTokenizer,
  bpeSpecFromGguf,
  endOfGenerationIds,
  tokenizerJsonFromSpec,
  type BpeTokenizerSpec,
} from '../../src/model/bpe-tokenizer.js';
import { ChatTemplateError, renderChatTemplate } from '../../src/model/chat-template.js';
import { expectFormatError } from '../support/format-errors.js';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const GGUF_PATH =
  process.env.LAZY_EDGE_GGUF ??
  resolve(REPO_ROOT, '../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf');
const DATA_DIR = resolve(REPO_ROOT, '../shared/data');
/** Written by tokenizing with llama.cpp itself: {"cases": [{"text", "ids"}]}. Checked whenever it is there. */
const LLAMACPP_FIXTURE = resolve(REPO_ROOT, 'test/fixtures/smollm2/tokenize-llamacpp.json');

const present = existsSync(GGUF_PATH);

/** Vectors from NOTES.md next to the model, checked there with llama.cpp. */
const NOTES_VECTORS: Array<[string, number[]]> = [
  ['The capital of France is', [504, 3575, 282, 4649, 314]],
  ['Hello world! 123', [19556, 905, 17, 216, 33, 34, 35]],
  ['\n', [198]],
  ['  multiple   spaces', [216, 2701, 256, 5600]],
  ['café naïve', [83, 1939, 2756, 15486, 46494]],
  ['12345678901234', [33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 33, 34, 35, 36]],
  ['tab\there\r\nCRLF', [15999, 197, 1531, 201, 198, 9088, 60, 54]],
  ['<|im_start|>user\nhi<|im_end|>\n', [1, 4093, 198, 6004, 2, 198]],
];

const CHAT_IDS = [
  1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2, 198, 1,
  4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
];

const MULTILINGUAL = [
  '日本語のテキストを正しく扱えるか確かめる。',
  '中文测试：你好，世界！',
  '한국어 문장도 들어 있습니다.',
  'Emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 and ✨',
  'Ελληνικά, русский, עברית, العربية, हिन्दी',
  'math ∑ ∞ ≠ ½ ² ³ ٣ Ⅻ, zero-width\u200bjoin, nbsp\u00a0here, bom\ufeffmid, next-line\u0085here',
];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

describe.skipIf(!present)(
  present
    ? 'BPE tokenizer on SmolLM2-135M-Instruct'
    : `BPE tokenizer (skipped: no GGUF at ${GGUF_PATH}; set LAZY_EDGE_GGUF)`,
  () => {
    let metadata: Record<string, unknown>;
    let spec: BpeTokenizerSpec;
    let tok: BpeTokenizer;
    const fromSpec = (s: BpeTokenizerSpec) =>
      BpeTokenizer.fromJson(tokenizerJsonFromSpec(s), { ...s, endIds: endOfGenerationIds(s) }, GGUF_PATH);

    beforeAll(async () => {
      metadata = (await gguf(GGUF_PATH, { allowLocalFile: true })).metadata as Record<string, unknown>;
      spec = bpeSpecFromGguf(metadata, GGUF_PATH);
      tok = fromSpec(spec);
    });

    it('reads the spec NOTES.md describes', () => {
      expect(spec.model).toBe('gpt2');
      expect(spec.pre).toBe('smollm');
      expect(spec.tokens).toHaveLength(49152);
      expect(spec.merges).toHaveLength(48900);
      expect([spec.bosId, spec.eosId, spec.addBos]).toEqual([1, 2, false]);
      const control = spec.tokenTypes.flatMap((t, id) => (t === 3 ? [id] : []));
      expect(control).toEqual(Array.from({ length: 17 }, (_, i) => i));
      expect(tok.vocabSize).toBe(49152);
      expect(tok.addBos).toBe(false);
    });

    it('ends generations at <|endoftext|> and <|im_end|>', () => {
      expect(endOfGenerationIds(spec)).toEqual([0, 2]);
      expect([...tok.endIds].sort((a, b) => a - b)).toEqual([0, 2]);
    });

    it.each(NOTES_VECTORS)('encodes %j as llama.cpp does', (text, ids) => {
      expect(tok.encode(text)).toEqual(ids);
    });

    it("renders the file's chat template to the 37 ids of NOTES.md", () => {
      const prompt = renderChatTemplate(
        metadata['tokenizer.chat_template'] as string,
        [{ role: 'user', content: 'What is the capital of France?' }],
        { bosToken: spec.tokens[spec.bosId], eosToken: spec.tokens[spec.eosId], addGenerationPrompt: true },
      );
      expect(prompt).toBe(
        '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' +
          '<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n',
      );
      expect(tok.encode(prompt, { bos: tok.addBos })).toEqual(CHAT_IDS);
    });

    it('adds BOS and EOS only when asked', () => {
      expect(tok.encode('')).toEqual([]);
      expect(tok.encode('', { bos: true, eos: true })).toEqual([1, 2]);
      expect(tok.encode('hi', { bos: true })).toEqual([1, 6004]);
      expect(tok.encode('hi', { eos: true })).toEqual([6004, 2]);
    });

    it('isolates every \\p{N} character, not only ASCII digits (llama.cpp smollm)', () => {
      // The space before a numeral is then a piece of its own, as before an ASCII digit ("Hello world! 123").
      const space = tok.encode(' ');
      for (const n of ['²', '½', '٣', 'Ⅻ']) {
        const ids = tok.encode(` ${n}${n}`);
        expect(ids.slice(0, 1), n).toEqual(space);
        expect(ids.slice(1), n).toEqual([...tok.encode(n), ...tok.encode(n)]);
      }
    });

    it('round-trips the shared prose files and multilingual text', () => {
      const files = readdirSync(DATA_DIR).filter((f) => f.endsWith('.txt'));
      expect(files.length).toBeGreaterThanOrEqual(3);
      for (const f of files) {
        const text = readFileSync(resolve(DATA_DIR, f), 'utf8');
        expect(tok.decode(tok.encode(text)) === text, f).toBe(true);
      }
      for (const s of [...MULTILINGUAL, ' ', '  leading', 'trailing  ', '\n\n\t\r\n', '\u0000\u0001x', '\ufeffbom']) {
        expect(tok.decode(tok.encode(s))).toBe(s);
      }
    });

    it('encodes English prose at about 4.6 characters a token', () => {
      const text = readFileSync(resolve(DATA_DIR, 'apache-2.0.txt'), 'utf8');
      const ratio = text.length / tok.encode(text).length;
      expect(ratio).toBeGreaterThan(4);
      expect(ratio).toBeLessThan(5.5);
    });

    it('streams the same text as decode, never a broken character', () => {
      for (const text of MULTILINGUAL) {
        const ids = tok.encode(text);
        const dec = tok.createDecoder();
        const chunks = ids.map((id) => dec.push(id));
        const tail = dec.flush();
        expect(tail).toBe('');
        expect(chunks.join('')).toBe(tok.decode(ids));
        expect(chunks.join('')).toBe(text);
        for (const c of chunks) expect(c).not.toContain('\ufffd');
      }
      // 😀 is four bytes in two byte-level tokens: the first holds its bytes back.
      const emoji = tok.encode('😀');
      expect(emoji.length).toBeGreaterThan(1);
      const dec = tok.createDecoder({ prev: 198 });
      expect(emoji.map((id) => dec.push(id))).toEqual([...emoji.slice(1).map(() => ''), '😀']);
    });

    it('flush() turns an unfinished character into U+FFFD', () => {
      const [first] = tok.encode('😀');
      const dec = tok.createDecoder();
      expect(dec.push(first)).toBe('');
      expect(dec.flush()).toBe('\ufffd');
    });

    it('decodes end-of-generation tokens to nothing and other control tokens to their text', () => {
      expect(tok.decode([0])).toBe('');
      expect(tok.decode([2])).toBe('');
      expect(tok.decode([1, 4093, 198, 6004, 2, 198])).toBe('<|im_start|>user\nhi\n');
      expect(tok.decode([5])).toBe('<file_sep>');
      const dec = tok.createDecoder();
      expect([1, 4093, 2, 0].map((id) => dec.push(id))).toEqual(['<|im_start|>', 'user', '', '']);
      expect(tok.decode([])).toBe('');
    });

    it('refuses ids outside the vocabulary', () => {
      for (const bad of [-1, 49152, 1.5, Number.NaN]) {
        expect(() => tok.decode([bad])).toThrow(RangeError);
        expect(() => tok.createDecoder().push(bad)).toThrow(RangeError);
      }
    });

    it('builds the same tokenizer.json every time, and the parsed text works alone', () => {
      const text = JSON.stringify(tokenizerJsonFromSpec(spec));
      expect(JSON.stringify(tokenizerJsonFromSpec(spec))).toBe(text);
      const fromText = BpeTokenizer.fromJson(
        JSON.parse(text),
        { ...spec, endIds: endOfGenerationIds(spec) },
        'tokenizer.json',
      );
      for (const [s] of NOTES_VECTORS) expect(fromText.encode(s)).toEqual(tok.encode(s));
      expect(fromText.encode(MULTILINGUAL.join('\n'))).toEqual(tok.encode(MULTILINGUAL.join('\n')));
    });

    it('refuses tokenizer kinds it does not implement, naming them', () => {
      const e = expectFormatError(
        () => tokenizerJsonFromSpec({ ...spec, pre: 'qwen2' }, GGUF_PATH),
        GGUF_PATH,
        "'qwen2'",
        'tokenizer.ggml.pre',
      );
      expect(e.expected).toContain('smollm');
      expectFormatError(() => tokenizerJsonFromSpec({ ...spec, model: 'llama' }), "'llama'", 'tokenizer.ggml.model');
      expectFormatError(() => endOfGenerationIds({ ...spec, model: 'bert' }), "'bert'");
      expectFormatError(() => bpeSpecFromGguf({ ...metadata, 'tokenizer.ggml.pre': 'tekken' }, GGUF_PATH), "'tekken'");
    });

    it('refuses metadata that cannot describe a vocabulary', () => {
      expectFormatError(
        () => tokenizerJsonFromSpec({ ...spec, tokenTypes: spec.tokenTypes.slice(1) }),
        'token_type',
        '49151 entries',
      );
      expectFormatError(() => tokenizerJsonFromSpec({ ...spec, eosId: 49152 }), 'eos_token_id', '49152');
      const dup = [...spec.tokens];
      dup[100] = dup[99];
      expectFormatError(() => tokenizerJsonFromSpec({ ...spec, tokens: dup }), 'distinct', 'ids 99 and 100');
      expectFormatError(() => tokenizerJsonFromSpec({ ...spec, merges: ['ab', ...spec.merges] }), 'merges[0]', '"ab"');
      const { 'tokenizer.ggml.merges': _merges, ...noMerges } = metadata;
      expectFormatError(() => bpeSpecFromGguf(noMerges, GGUF_PATH), 'tokenizer.ggml.merges', 'no such key');
      expectFormatError(
        () => BpeTokenizer.fromJson({ model: { type: 'Unigram' } }, { ...spec, endIds: [] }, 'x.json'),
        'x.json',
        'BPE',
      );
    });

    it('renders other templates and reports template errors as ChatTemplateError', () => {
      const msgs = [{ role: 'user', content: 'hi' }];
      const opts = { bosToken: '<s>', eosToken: '</s>', addGenerationPrompt: false };
      expect(renderChatTemplate('{{ bos_token }}{{ messages[0].content }}{{ eos_token }}', msgs, opts)).toBe(
        '<s>hi</s>',
      );
      expect(() => renderChatTemplate('{% for m in messages %}', msgs, opts)).toThrow(ChatTemplateError);
      let err: unknown;
      try {
        renderChatTemplate("{{ raise_exception('no system role') }}", msgs, opts);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ChatTemplateError);
      expect((err as ChatTemplateError).stage).toBe('render');
      expect((err as Error).message).toContain('no system role');
      expect((err as Error).cause).toBeInstanceOf(Error);
    });

    it('constructs and encodes fast enough', () => {
      const build: number[] = [];
      const construct: number[] = [];
      for (let i = 0; i < 5; i++) {
        const t0 = performance.now();
        const json = JSON.parse(JSON.stringify(tokenizerJsonFromSpec(spec)));
        const t1 = performance.now();
        BpeTokenizer.fromJson(json, { ...spec, endIds: endOfGenerationIds(spec) }, 'tokenizer.json');
        build.push(t1 - t0);
        construct.push(performance.now() - t1);
      }
      const text = readFileSync(resolve(DATA_DIR, 'lgpl-2.1.txt'), 'utf8');
      const fresh = fromSpec(spec);
      let t0 = performance.now();
      const n = fresh.encode(text).length;
      const cold = performance.now() - t0;
      t0 = performance.now();
      fresh.encode(text);
      const warm = performance.now() - t0;
      console.log(
        `bpe tokenizer: spec -> tokenizer.json text -> parsed ${median(build).toFixed(0)} ms, fromJson ${median(construct).toFixed(0)} ms (median of 5); ` +
          `encode ${text.length} chars -> ${n} tokens ${cold.toFixed(0)} ms cold, ${warm.toFixed(0)} ms warm`,
      );
      // Loose bounds against regressions (tens of ms here), not a benchmark.
      expect(median(construct)).toBeLessThan(2000);
      expect(cold).toBeLessThan(2000);
    });

    it.skipIf(!existsSync(LLAMACPP_FIXTURE))('matches llama.cpp on every case of the llama.cpp fixture', () => {
      const fixture = JSON.parse(readFileSync(LLAMACPP_FIXTURE, 'utf8')) as {
        cases: Array<{ text: string; ids: number[] }>;
      };
      expect(fixture.cases.length).toBeGreaterThan(0);
      const mismatches = fixture.cases.filter((c) => tok.encode(c.text).join() !== c.ids.join());
      expect(mismatches.map((c) => ({ text: c.text, llamacpp: c.ids, ours: tok.encode(c.text) }))).toEqual([]);
    });
  },
);

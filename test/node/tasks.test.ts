/**
 * The long-context task suite (scripts/quality/tasks.ts): deterministic for a seed, each answer in its
 * prompt exactly once, prompts within the requested length as SmolLM2 counts them; the scorer and
 * the --tasks-file reader on known cases.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { servedShardsDir } from '../../scripts/lib/served-model.js';
import {
  bucketOf,
  DEFAULT_FILLER,
  generateTasks,
  normalize,
  occurrences,
  parseTasksFile,
  scoreReply,
  TASKS,
  type ChatTurn,
} from '../../scripts/quality/tasks.js';
import { BpeTokenizer } from '../../src/model/bpe-tokenizer.js';
import { renderChatTemplate } from '../../src/model/chat-template.js';
import { parseManifest } from '../../src/model/manifest.js';

const filler = DEFAULT_FILLER.map((f) => readFileSync(f, 'utf8')).join('\n');
let countTokens: (m: ChatTurn[]) => number;

beforeAll(() => {
  // SmolLM2's own tokenizer and template, from the served shards, as `npm run eval` counts.
  const dir = servedShardsDir();
  const m = parseManifest(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  if (m.tokenizer.format !== 'hf-bpe' || !('format' in m.chatTemplate)) throw new Error('expected SmolLM2 shards');
  const t = m.tokenizer;
  const tok = BpeTokenizer.fromJson(
    JSON.parse(readFileSync(join(dir, t.file), 'utf8')),
    { bosId: t.bosId, eosId: t.eosId, addBos: t.addBos, endIds: t.endIds },
    t.file,
  );
  const tpl = m.chatTemplate;
  countTokens = (msgs) =>
    tok.encode(
      renderChatTemplate(tpl.template, msgs, {
        bosToken: tpl.bosToken,
        eosToken: tpl.eosToken,
        addGenerationPrompt: true,
      }),
    ).length;
});

describe('generated tasks', () => {
  for (const task of TASKS) {
    it(`${task}: the same seed gives the same prompts, another seed others; the answer occurs exactly once; within the length`, () => {
      const opts = { task, tokens: 1024, count: 4, seed: 3, filler, countTokens };
      const a = generateTasks(opts);
      expect(generateTasks(opts)).toEqual(a);
      expect(generateTasks({ ...opts, seed: 4 }).map((c) => c.answer)).not.toEqual(a.map((c) => c.answer));
      expect(new Set(a.map((c) => c.id)).size).toBe(4);
      for (const c of a) {
        const text = c.messages.map((m) => m.content).join('\n');
        expect(occurrences(text, c.answer), c.id).toBe(1);
        const n = countTokens(c.messages);
        expect(n).toBeLessThanOrEqual(1024);
        expect(n).toBeGreaterThan(900);
        expect(c.task).toBe(task);
      }
      // The answer's depth sweeps the prompt: first case near the start, last near the end.
      const at = (k: number) => a[k].messages[0].content.indexOf(a[k].answer) / a[k].messages[0].content.length;
      expect(at(0)).toBeLessThan(0.2);
      expect(at(3)).toBeGreaterThan(0.8);
    });
  }

  it('distractors look like the answer but are not it', () => {
    for (const c of generateTasks({
      task: 'passkey-distractors',
      tokens: 512,
      count: 3,
      seed: 9,
      filler,
      countTokens,
    })) {
      const keys = [...c.messages[0].content.matchAll(/\b\d{5}\b/g)].map((m) => m[0]);
      expect(keys).toContain(c.answer);
      expect(keys.filter((k) => k !== c.answer).length).toBeGreaterThanOrEqual(3);
    }
    for (const c of generateTasks({ task: 'mdqa', tokens: 512, count: 3, seed: 9, filler, countTokens })) {
      expect(c.messages[0].content.match(/Document: /g)?.length).toBe(5);
    }
  });
});

describe('scoring', () => {
  it('counts a reply as correct when it contains the answer, case and whitespace aside', () => {
    expect(scoreReply('The pass key is 48213.', '48213')).toBe(true);
    expect(scoreReply('the capital is   THORN wick', 'Thorn Wick')).toBe(true);
    expect(scoreReply('The pass key is 48231.', '48213')).toBe(false);
    expect(scoreReply('anything', '')).toBe(false);
    expect(normalize('  A\n\tB  ')).toBe('a b');
  });

  it('buckets prompt lengths to the nearest of 1k/2k/4k/8k', () => {
    expect([900, 1500, 1600, 3000, 3100, 9000].map(bucketOf)).toEqual([1024, 1024, 2048, 2048, 4096, 8192]);
  });

  it('reads a tasks file line by line and names the line of a bad one', () => {
    const ok = parseTasksFile(
      '{"id":"a","task":"t","messages":[{"role":"user","content":"hi"}],"answer":"x","extra":1}\n\n{"id":"b","task":"t","messages":[{"role":"user","content":"yo"}],"answer":"y","max_tokens":4}\n',
      'f.jsonl',
    );
    expect(ok).toEqual([
      { id: 'a', task: 't', messages: [{ role: 'user', content: 'hi' }], answer: 'x' },
      { id: 'b', task: 't', messages: [{ role: 'user', content: 'yo' }], answer: 'y', max_tokens: 4 },
    ]);
    expect(() => parseTasksFile('{"id":"a"}\n', 'f.jsonl')).toThrow(/f\.jsonl:1: expected/);
    expect(() => parseTasksFile('ok\n', 'g.jsonl')).toThrow(/g\.jsonl:1: not JSON/);
  });
});

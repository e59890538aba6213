/**
 * A seeded long-context task suite, generated at run time (nothing is downloaded), the way the
 * LazyLLM paper measures pruning: does the model still find the one fact the question needs?
 * - passkey: a number hidden at a chosen depth in filler prose, asked for at the end;
 * - passkey-distractors: the same, with look-alike keys under other labels around it;
 * - mdqa: short documents of synthetic facts spread through the filler, one question answered by
 *   one of them, with look-alike entities holding other answers.
 * - which-key: three facts of the same shape (three people's locker numbers) spread through the
 *   filler, and the question asks for one of them. Unlike mdqa's look-alike names, which defeat
 *   this model even dense, the three owners are plain distinct names: SmolLM2 answers them densely
 *   at 2k and 4k, and a pruned prompt keeps the right answer only if it keeps the asked-for fact.
 * Each answer occurs in the prompt exactly once, so "the reply contains it" means the model read it.
 */
import { resolve } from 'node:path';
import { createRng, type Rng } from '../../src/model/prng.js';
import { REPO_ROOT } from '../lib/node-env.js';

/** Haystack prose for the generated tasks (../shared/data/README.md): three license texts. */
export const DEFAULT_FILLER = ['apache-2.0.txt', 'mpl-2.0.txt', 'lgpl-2.1.txt'].map((f) =>
  resolve(REPO_ROOT, '../shared/data', f),
);

export const TASKS = ['passkey', 'passkey-distractors', 'mdqa', 'which-key'] as const;
export type TaskName = (typeof TASKS)[number];

export interface ChatTurn {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** One prompt of the suite, or one line of a --tasks-file (same fields). */
export interface TaskCase {
  id: string;
  /** the group a case is reported under */
  task: string;
  messages: ChatTurn[];
  answer: string;
  /** greedy tokens to generate (default 16) */
  max_tokens?: number;
}

export interface TaskOptions {
  task: TaskName;
  /** prompt length to aim for, in tokens of the rendered chat prompt (never exceeded) */
  tokens: number;
  count: number;
  seed: number;
  /** prose the needles are hidden in (../shared/data: license texts) */
  filler: string;
  /** tokens of the rendered chat prompt for these messages, as the served model counts them */
  countTokens: (messages: ChatTurn[]) => number;
}

/** Whitespace collapsed and lower-cased: how replies and answers are compared. */
export function normalize(s: string): string {
  return s.toLowerCase().replace(/\s+/g, ' ').trim();
}

/** Correct when the greedy reply contains the answer (case-insensitive, whitespace collapsed). */
export function scoreReply(reply: string, answer: string): boolean {
  const a = normalize(answer);
  return a.length > 0 && normalize(reply).includes(a);
}

/** How many times `needle` occurs in `text` (overlaps counted). */
export function occurrences(text: string, needle: string): number {
  let n = 0;
  for (let i = text.indexOf(needle); i >= 0; i = text.indexOf(needle, i + 1)) n++;
  return n;
}

function sentences(text: string): string[] {
  return text
    .replace(/\s+/g, ' ')
    .split(/(?<=[.;:])\s+/)
    .map((s) => s.trim())
    .filter((s) => s.length > 20);
}

const int = (rng: Rng, lo: number, hi: number) => lo + Math.floor(rng.next() * (hi - lo + 1));
const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[int(rng, 0, xs.length - 1)];

function fiveDigits(rng: Rng, avoid: string[]): string {
  for (;;) {
    const k = String(int(rng, 10000, 99999));
    if (!avoid.some((a) => a.includes(k) || k.includes(a))) return k;
  }
}

/** Look-alike numbers: the key with two digits swapped or one changed. */
function lookAlike(rng: Rng, key: string, avoid: string[]): string {
  for (;;) {
    const d = key.split('');
    const i = int(rng, 0, 3);
    if (rng.next() < 0.5) [d[i], d[i + 1]] = [d[i + 1], d[i]];
    else d[int(rng, 1, 4)] = String(int(rng, 0, 9));
    const k = d.join('');
    if (k !== key && !avoid.some((a) => a.includes(k) || k.includes(a))) return k;
  }
}

const SYLLABLES = [
  've',
  'lo',
  'ria',
  'tha',
  'mor',
  'ken',
  'dal',
  'sa',
  'ri',
  'on',
  'bel',
  'qu',
  'ast',
  'ur',
  'ny',
  'gar',
  'pel',
  'tis',
];
function name(rng: Rng): string {
  const n = int(rng, 2, 3);
  const s = Array.from({ length: n }, () => pick(rng, SYLLABLES)).join('');
  return s[0].toUpperCase() + s.slice(1);
}
function lookAlikeName(rng: Rng, n: string): string {
  const vowels = 'aeiou';
  const i = [...n].findIndex((c, k) => k > 0 && vowels.includes(c));
  const at = i > 0 ? i : n.length - 1;
  const v = pick(
    rng,
    [...vowels].filter((c) => c !== n[at]),
  );
  return n.slice(0, at) + v + n.slice(at + 1);
}

const OWNERS = [
  'Alice',
  'Bruno',
  'Chloe',
  'Daniel',
  'Emma',
  'Felix',
  'Grace',
  'Hugo',
  'Irene',
  'Jonas',
  'Karen',
  'Leo',
  'Maria',
  'Nathan',
  'Olivia',
  'Peter',
];

interface Needles {
  /** facts to hide, in order; the first holds the answer */
  facts: string[];
  question: string;
  answer: string;
}

function needlesFor(task: TaskName, rng: Rng): Needles {
  if (task === 'passkey' || task === 'passkey-distractors') {
    const key = fiveDigits(rng, []);
    const facts = [`The pass key is ${key}. Remember it.`];
    if (task === 'passkey-distractors') {
      const used = [key];
      for (const label of ['backup key', 'door code', 'old pass key that no longer works']) {
        const k = lookAlike(rng, key, used);
        used.push(k);
        facts.push(`The ${label} is ${k}.`);
      }
    }
    return { facts, question: 'What is the pass key? Answer with the number only.', answer: key };
  }
  if (task === 'which-key') {
    const owners = [...OWNERS];
    const people = Array.from({ length: 3 }, () => owners.splice(int(rng, 0, owners.length - 1), 1)[0]);
    const keys: string[] = [];
    for (const _ of people) keys.push(fiveDigits(rng, keys));
    return {
      facts: people.map((p, i) => `${p}'s locker number is ${keys[i]}.`),
      question: `What is ${people[0]}'s locker number? Answer with the number only.`,
      answer: keys[0],
    };
  }
  const city = name(rng);
  const kingdom = name(rng);
  const facts = [`Document: in the records of the kingdom of ${kingdom}, its capital city is ${city}.`];
  const used = new Set([city, kingdom]);
  for (let d = 0; d < 4; d++) {
    // Look-alike kingdoms (one vowel changed) with capitals of their own, and unrelated ones.
    let k = d < 2 ? lookAlikeName(rng, kingdom) : name(rng);
    let c = name(rng);
    while (used.has(k) || [...used].some((u) => u.includes(k) || k.includes(u))) k = name(rng);
    while (used.has(c) || [...used].some((u) => u.includes(c) || c.includes(u))) c = name(rng);
    used.add(k).add(c);
    facts.push(`Document: in the records of the kingdom of ${k}, its capital city is ${c}.`);
  }
  return {
    facts,
    question: `According to the documents, what is the capital city of the kingdom of ${kingdom}? Answer with the name only.`,
    answer: city,
  };
}

function render(filler: string[], facts: string[], depths: number[], question: string): ChatTurn[] {
  const parts = [...filler];
  // Insert from the deepest so earlier indices stay valid.
  const at = depths.map((d) => Math.round(d * parts.length));
  [...facts.keys()].sort((a, b) => at[b] - at[a]).forEach((i) => parts.splice(at[i], 0, facts[i]));
  return [{ role: 'user', content: `${parts.join(' ')}\n\n${question}` }];
}

/** `count` cases of one task near `tokens` tokens each; the same seed gives the same cases. */
export function generateTasks(o: TaskOptions): TaskCase[] {
  const all = sentences(o.filler);
  if (all.length < 10) throw new Error('the filler text holds too few sentences');
  const cases: TaskCase[] = [];
  for (let k = 0; k < o.count; k++) {
    const rng = createRng(o.seed * 7919 + k * 104729 + TASKS.indexOf(o.task) * 15485863);
    const n = needlesFor(o.task, rng);
    // The answer's depth sweeps the prompt from 5% to 95% over the cases; distractors land elsewhere.
    const depth = o.count === 1 ? 0.5 : 0.05 + (0.9 * k) / (o.count - 1);
    const depths = n.facts.map((_, i) => (i === 0 ? depth : rng.next()));
    const start = int(rng, 0, all.length - 1);
    const fillerOf = (m: number) => Array.from({ length: m }, (_, i) => all[(start + i) % all.length]);
    // The most filler sentences that keep the rendered prompt within the target.
    let lo = 0;
    let hi = 1;
    while (o.countTokens(render(fillerOf(hi), n.facts, depths, n.question)) <= o.tokens) {
      lo = hi;
      hi *= 2;
    }
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (o.countTokens(render(fillerOf(mid), n.facts, depths, n.question)) <= o.tokens) lo = mid;
      else hi = mid;
    }
    const messages = render(fillerOf(lo), n.facts, depths, n.question);
    const text = messages.map((m) => m.content).join('\n');
    // Filler that happens to contain the answer would let a model score without reading the needle.
    if (occurrences(text, n.answer) !== 1) {
      k--;
      o = { ...o, seed: o.seed + 1 };
      continue;
    }
    cases.push({ id: `${o.task}-${o.tokens}-${k}`, task: o.task, messages, answer: n.answer, max_tokens: 16 });
  }
  return cases;
}

/** Prompt-length buckets for reporting: the nearest of these. */
export const BUCKETS = [1024, 2048, 4096, 8192] as const;
export function bucketOf(tokens: number): number {
  return BUCKETS.reduce((best, b) => (Math.abs(b - tokens) < Math.abs(best - tokens) ? b : best), BUCKETS[0]);
}

/** Lines of a --tasks-file: `{"id", "task", "messages", "answer"}` (+ optional max_tokens); other fields ignored. */
export function parseTasksFile(text: string, file: string): TaskCase[] {
  return text
    .split('\n')
    .map((l, i) => [l.trim(), i + 1] as const)
    .filter(([l]) => l.length > 0)
    .map(([l, line]) => {
      let o: Record<string, unknown>;
      try {
        o = JSON.parse(l);
      } catch (e) {
        throw new Error(`${file}:${line}: not JSON (${(e as Error).message})`);
      }
      const msgs = o.messages;
      const okMsgs =
        Array.isArray(msgs) &&
        msgs.length > 0 &&
        msgs.every((m) => m && typeof m.content === 'string' && ['system', 'user', 'assistant'].includes(m.role));
      if (typeof o.id !== 'string' || typeof o.task !== 'string' || typeof o.answer !== 'string' || !okMsgs) {
        throw new Error(
          `${file}:${line}: expected {"id": string, "task": string, "messages": [{"role", "content"}...], "answer": string}`,
        );
      }
      const max = o.max_tokens;
      if (max !== undefined && !(Number.isInteger(max) && (max as number) > 0))
        throw new Error(`${file}:${line}: max_tokens must be a positive integer`);
      return {
        id: o.id,
        task: o.task,
        messages: msgs as ChatTurn[],
        answer: o.answer,
        ...(max !== undefined ? { max_tokens: max as number } : {}),
      };
    });
}

/**
 * The prefix-cache benchmark's document: filler prose of the dev task suite with one five-digit
 * fact per label at evenly spread depths, and the chat prompt asking for one of them. Shared by the
 * in-process run (prefix-cache.ts) and the served one (prefix-cache-served.ts).
 */
import { readFileSync } from 'node:fs';
import type { LoadedModel } from '../../src/engine/model.js';
import { encodeChat } from '../../src/model/chat-prompt.js';
import { createRng } from '../../src/model/prng.js';
import { DEFAULT_FILLER } from '../quality/tasks.js';

/** What the facts are about: one five-digit number each, asked for as "What is the <label>?". */
const LABELS = [
  'pass key',
  'door code',
  'safe combination',
  'parking permit number',
  'invoice number',
  'flight number',
  'membership number',
  'tracking number',
  'ticket number',
  'account number',
];

export interface Doc {
  /** the document, facts included */
  text: string;
  facts: { label: string; key: string }[];
}

/** Filler sentences with one five-digit fact per label at evenly spread depths, about `tokens` tokens as a chat prompt. */
export function makeDoc(model: LoadedModel, tokens: number, questions: number, seed: number): Doc {
  const rng = createRng(seed);
  const sentences = readFileSync(DEFAULT_FILLER[0], 'utf8')
    .replace(/\s+/g, ' ')
    .split(/(?<=[.;:])\s+/)
    .filter((s) => s.length > 20);
  const facts = LABELS.slice(0, questions).map((label) => ({
    label,
    key: String(10000 + Math.floor(rng.next() * 90000)),
  }));
  const render = (n: number) => {
    const parts = sentences.slice(0, n);
    const at = facts.map((_, i) => Math.round((0.05 + (0.9 * i) / Math.max(1, questions - 1)) * n));
    for (let i = facts.length - 1; i >= 0; i--) parts.splice(at[i], 0, `The ${facts[i].label} is ${facts[i].key}.`);
    return parts.join(' ');
  };
  // The most filler sentences that keep the first question's prompt within `tokens`.
  let n = 1;
  while (n < sentences.length && promptOf(model, render(n + 1), facts[0].label).prompt.length <= tokens) n++;
  const text = render(n);
  for (const f of facts)
    if (text.split(f.key).length !== 2) throw new Error(`the filler holds ${f.key}; use another --seed`);
  return { text, facts };
}

/** The user message asking for `label`'s number. */
export const questionMessage = (doc: string, label: string) =>
  `${doc}\n\nWhat is the ${label}? Answer with the number only.`;

export function promptOf(model: LoadedModel, doc: string, label: string) {
  const content = questionMessage(doc, label);
  return encodeChat(model.tokenizer, model.manifest.chatTemplate, [{ role: 'user', content }]);
}

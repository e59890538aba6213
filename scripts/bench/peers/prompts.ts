/**
 * SmolLM2 prompts every row gets as the same token ids: the first N tokens of a text (our BPE
 * tokenizer, which equals llama.cpp's on the fixtures), each with a text that tokenizes back to
 * exactly those ids, since wllama only takes text. A window whose text does not round-trip is moved
 * one token on until one does.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BpeTokenizer } from '../../../src/model/bpe-tokenizer.js';
import type { TextTokenizer } from '../../../src/model/text-tokenizer.js';
import { renderChat, type ChatMessage, type ChatTemplate } from '../../../src/model/chat-prompt.js';
import { REPO_ROOT } from '../../lib/node-env.js';
import type { PeerPrompt } from './peer.js';

export function shardTokenizer(shards: string): TextTokenizer {
  const manifest = JSON.parse(readFileSync(join(shards, 'manifest.json'), 'utf8')) as {
    tokenizer: { file: string; format: string; bosId: number; eosId: number; addBos: boolean; endIds: number[] };
  };
  const t = manifest.tokenizer;
  if (t.format !== 'hf-bpe') throw new Error(`${shards}: tokenizer format ${t.format}, expected hf-bpe (SmolLM2)`);
  const json = JSON.parse(readFileSync(join(shards, t.file), 'utf8')) as object;
  return BpeTokenizer.fromJson(json, { bosId: t.bosId, eosId: t.eosId, addBos: t.addBos, endIds: t.endIds }, t.file);
}

const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/** ids -> a text whose tokenization is exactly ids, or null */
export function roundTrip(tok: TextTokenizer, ids: number[]): PeerPrompt | null {
  const text = tok.decode(ids);
  return same(tok.encode(text, { bos: false }), ids) ? { ids, text } : null;
}

export function textWindows(
  tok: TextTokenizer,
  text: string | readonly number[],
  lengths: number[],
): Record<number, PeerPrompt> {
  const all = typeof text === 'string' ? tok.encode(text, { bos: false }) : [...text];
  const out: Record<number, PeerPrompt> = {};
  for (const n of lengths) {
    for (let off = 0; off + n <= all.length && off < 256; off++) {
      const p = roundTrip(tok, all.slice(off, off + n));
      if (p) {
        out[n] = p;
        break;
      }
    }
    if (!out[n])
      throw new Error(
        `no ${n}-token window of the text round-trips through the tokenizer (text has ${all.length} tokens)`,
      );
  }
  return out;
}

export interface ChatCheck {
  name: string;
  prompt: PeerPrompt;
  /** the exact-weights greedy reply (test/fixtures/smollm2/chat-greedy.json) */
  exact: number[];
  /** the first step whose exact top-2 margin is a near-tie (null: none); replies are compared before it */
  firstNearTie: number | null;
  maxTokens: number;
  endIds: number[];
}

interface ChatFixture {
  gguf_sha256: string;
  max_tokens: number;
  end_ids: number[];
  prompts: { messages: ChatMessage[]; prompt_ids: number[]; exact: { ids: number[] }; first_near_tie: number | null }[];
}

export const CHAT_FIXTURE = join(REPO_ROOT, 'test', 'fixtures', 'smollm2', 'chat-greedy.json');

/** The fixture's chat prompts, rendered with the model's own template (text) and checked against its ids. */
export function chatChecks(shards: string, tok: TextTokenizer, fixture = CHAT_FIXTURE): ChatCheck[] {
  const f = JSON.parse(readFileSync(fixture, 'utf8')) as ChatFixture;
  const manifest = JSON.parse(readFileSync(join(shards, 'manifest.json'), 'utf8')) as { chatTemplate: ChatTemplate };
  return f.prompts.map((p) => {
    const text = renderChat(manifest.chatTemplate, p.messages);
    if (!same(tok.encode(text, { bos: false }), p.prompt_ids))
      throw new Error(`${fixture}: "${p.messages[0].content}" renders to other ids than the fixture's`);
    return {
      name: String(p.messages[0].content),
      prompt: { ids: p.prompt_ids, text },
      exact: p.exact.ids,
      firstNearTie: p.first_near_tie,
      maxTokens: f.max_tokens,
      endIds: f.end_ids,
    };
  });
}

/** A reply agrees with the exact weights: equal ids up to the first near-tie (all of them if none). */
export function agreesWithExact(check: ChatCheck, ids: readonly number[]): boolean {
  const n = check.firstNearTie ?? Math.max(check.exact.length, ids.length);
  for (let i = 0; i < n; i++) if (ids[i] !== check.exact[i]) return false;
  return true;
}

/** SmolLM2 fixtures written by scripts/reference/ (numpy over gguf-dequantized weights; llama.cpp), and the metrics over them. */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadModelFromDir } from '../../scripts/lib/node-env.js';
import { servedShardsDir } from '../../scripts/lib/served-model.js';
import { DEFAULT_FILLER } from '../../scripts/quality/tasks.js';
import { SequenceState } from '../../src/engine/caches.js';
import { generate } from '../../src/engine/generate.js';
import { argmax, logSoftmax } from '../../src/engine/logits.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { runStep } from '../../src/engine/step.js';

const FIXTURES = fileURLToPath(new URL('../fixtures/smollm2/', import.meta.url));
export const fixture = <T>(name: string): T => JSON.parse(readFileSync(`${FIXTURES}${name}`, 'utf8')) as T;

/** Per stored position: the reference's top-k ids and natural-log probabilities, and its top-2 logit margin. */
export interface LogitsPrompt {
  name: string;
  ids: number[];
  positions: number[];
  top_ids: number[][];
  top_logprobs: number[][];
  margin: number[];
}
export interface LogitsFixture {
  top_k: number;
  prompts: LogitsPrompt[];
  vs_exact?: Record<string, { mean_kl: number; argmax_agreement: number }>;
}
export interface ChatFixture {
  max_tokens: number;
  near_tie: number;
  end_ids: number[];
  prompts: Array<{
    messages: Array<{ role: 'user' | 'system' | 'assistant'; content: string }>;
    prompt_ids: number[];
    exact: { ids: number[]; margins: number[]; text: string };
    first_near_tie: number | null;
    llamacpp: { ids: number[] };
    llamacpp_departs_at: number | null;
  }>;
}

let model: Promise<LoadedModel> | null = null;
/** The served shards (model-shards/smollm2-135m-instruct, built by the global setup), no memory budget: Node is not an isolate. */
export function loadSmolLM2(): Promise<LoadedModel> {
  const prev = process.env.LAZY_EDGE_MEMORY_BUDGET_MB;
  process.env.LAZY_EDGE_MEMORY_BUDGET_MB = 'off';
  model ??= loadModelFromDir(servedShardsDir()).finally(() => {
    if (prev === undefined) delete process.env.LAZY_EDGE_MEMORY_BUDGET_MB;
    else process.env.LAZY_EDGE_MEMORY_BUDGET_MB = prev;
  });
  return model;
}

/** Dense logits at each of `positions` (ascending): the prompt is fed in chunks that end there. */
export async function logitsAt(m: LoadedModel, ids: number[], positions: number[]): Promise<Float32Array[]> {
  const seq = new SequenceState(m.config);
  const out: Float32Array[] = [];
  let fed = 0;
  for (const p of positions) {
    const r = await runStep(m, seq, ids.slice(fed, p + 1), { schedule: null });
    fed = p + 1;
    out.push(r.logits);
  }
  return out;
}

/**
 * KL(reference || ours) over the reference's top-k tokens plus one bucket for the rest of the mass:
 * the fixtures store only the top-k. It is a lower bound of the full KL, and close to it when the
 * top-k hold most of the mass (scripts/reference/README.md).
 */
export function bucketKl(refIds: number[], refLogprobs: number[], ours: Float64Array): number {
  let kl = 0;
  let pTop = 0;
  let qTop = 0;
  refIds.forEach((id, k) => {
    const p = Math.exp(refLogprobs[k]);
    kl += p * (refLogprobs[k] - ours[id]);
    pTop += p;
    qTop += Math.exp(ours[id]);
  });
  const pRest = Math.max(0, 1 - pTop);
  const qRest = Math.max(1e-300, 1 - qTop);
  if (pRest > 0) kl += pRest * (Math.log(pRest) - Math.log(qRest));
  return Math.max(0, kl);
}

/** How `m`'s dense logits at a reference prompt's positions compare with the reference's stored top-k. */
export interface LogitsComparison {
  /** bucketKl at each position, and their mean and largest */
  kls: number[];
  mean: number;
  max: number;
  /** positions where `m`'s argmax is the reference's top-1 */
  top1: number;
  /** the prompt positions where the reference's top-2 margin exceeds 0.1 and `m`'s argmax differs */
  clearDisagreements: number[];
}

export async function compareLogits(m: LoadedModel, p: LogitsPrompt): Promise<LogitsComparison> {
  const ours = (await logitsAt(m, p.ids, p.positions)).map(logSoftmax);
  const kls = ours.map((lp, i) => bucketKl(p.top_ids[i], p.top_logprobs[i], lp));
  const agrees = ours.map((lp, i) => argmax(lp) === p.top_ids[i][0]);
  return {
    kls,
    mean: kls.reduce((a, b) => a + b, 0) / kls.length,
    max: Math.max(...kls),
    top1: agrees.filter(Boolean).length,
    clearDisagreements: p.positions.filter((_, i) => p.margin[i] > 0.1 && !agrees[i]),
  };
}

/** Each reference chat prompt's greedy dense reply on `m`, beside the exact reference's ids (without the end id it stopped on, which generate() does not emit). */
export async function greedyChatReplies(m: LoadedModel, chat: ChatFixture) {
  const out: { prompt: ChatFixture['prompts'][number]; tokens: number[]; text: string; ref: number[] }[] = [];
  for (const c of chat.prompts) {
    const r = await generate(m, new SequenceState(m.config), c.prompt_ids, {
      maxTokens: chat.max_tokens,
      sampler: { temperature: 0, topP: 1, topK: 0, seed: 1 },
      schedule: null,
    });
    out.push({ prompt: c, tokens: r.tokens, text: r.text, ref: c.exact.ids.filter((t) => !chat.end_ids.includes(t)) });
  }
  return out;
}

/** About 790 tokens of license text holding two facts: the door code early, the pass key late (a layout dense answers both ways). */
export function twoFactDocument() {
  const filler = readFileSync(DEFAULT_FILLER[0], 'utf8')
    .replace(/\s+/g, ' ')
    .split(/(?<=\.)\s+/)
    .slice(20, 40);
  const facts = { 'pass key': '48213', 'door code': '73950' };
  const doc = [
    ...filler.slice(0, 3),
    `The door code is ${facts['door code']}.`,
    ...filler.slice(3, 13),
    `The pass key is ${facts['pass key']}. Remember it.`,
    ...filler.slice(13),
  ].join(' ');
  return { doc, facts };
}

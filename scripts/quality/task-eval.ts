/**
 * Runs task cases (scripts/quality/tasks.ts) dense and lazy side by side: the same prompt, greedy, the
 * order alternating between cases so that neither mode always runs on a warmer machine.
 */
import { SequenceState } from '../../src/engine/caches.js';
import { decodeLoop, type DecodeStep } from '../../src/engine/decode-loop.js';
import { generate } from '../../src/engine/generate.js';
import type { LoadedModel } from '../../src/engine/model.js';
import type { Schedule, TokenSpan } from '../../src/engine/policy.js';
import { encodePrompt } from '../../src/model/text-tokenizer.js';
import { encodeChat, renderChat } from '../../src/model/chat-prompt.js';
import { median } from '../lib/stats.js';
import { bucketOf, scoreReply, type ChatTurn, type TaskCase } from './tasks.js';

export interface TaskResult {
  id: string;
  task: string;
  tokens: number;
  bucket: number;
  answer: string;
  reply_dense: string;
  reply_lazy: string;
  correct_dense: boolean;
  correct_lazy: boolean;
  ttft_dense_ms: number;
  ttft_lazy_ms: number;
}

export interface TaskSummary {
  n: number;
  accuracy_dense: number;
  accuracy_lazy: number;
  ttft_dense_ms: number;
  ttft_lazy_ms: number;
  /** median of per-prompt dense/lazy ratios */
  ttft_speedup: number;
}

/** A task's chat as prompt tokens and its question's span, as the Worker renders it. */
export function chatPrompt(model: LoadedModel, messages: ChatTurn[]): { prompt: number[]; question: TokenSpan | null } {
  return encodeChat(model.tokenizer, model.manifest.chatTemplate, messages);
}

/** The prompt tokens alone (cheaper: what task generation counts). */
export function promptTokens(model: LoadedModel, messages: ChatTurn[]): number[] {
  return encodePrompt(model.tokenizer, renderChat(model.manifest.chatTemplate, messages));
}

export async function runTaskCase(
  model: LoadedModel,
  c: TaskCase,
  schedule: Schedule,
  order: number,
): Promise<TaskResult> {
  const { prompt, question } = chatPrompt(model, c.messages);
  const run = (s: Schedule | null) =>
    generate(model, new SequenceState(model.config), prompt, {
      maxTokens: c.max_tokens ?? 16,
      sampler: { temperature: 0, topP: 1, topK: 0, seed: 1 },
      schedule: s,
      question,
    });
  const first = await run(order % 2 === 0 ? null : schedule);
  const second = await run(order % 2 === 0 ? schedule : null);
  const [dense, lazy] = order % 2 === 0 ? [first, second] : [second, first];
  return {
    id: c.id,
    task: c.task,
    tokens: prompt.length,
    bucket: bucketOf(prompt.length),
    answer: c.answer,
    reply_dense: dense.text,
    reply_lazy: lazy.text,
    correct_dense: scoreReply(dense.text, c.answer),
    correct_lazy: scoreReply(lazy.text, c.answer),
    // prefill = time to the first token's logits (sampling it is microseconds)
    ttft_dense_ms: dense.stats.prefill_ms,
    ttft_lazy_ms: lazy.stats.prefill_ms,
  };
}

/** task -> bucket -> summary */
export function summarizeTasks(results: TaskResult[]): Record<string, Record<string, TaskSummary>> {
  const out: Record<string, Record<string, TaskSummary>> = {};
  for (const r of results)
    (out[r.task] ??= {})[r.bucket] ??= {
      n: 0,
      accuracy_dense: 0,
      accuracy_lazy: 0,
      ttft_dense_ms: 0,
      ttft_lazy_ms: 0,
      ttft_speedup: 0,
    };
  for (const [task, buckets] of Object.entries(out)) {
    for (const b of Object.keys(buckets)) {
      const rs = results.filter((r) => r.task === task && String(r.bucket) === b);
      buckets[b] = {
        n: rs.length,
        accuracy_dense: rs.filter((r) => r.correct_dense).length / rs.length,
        accuracy_lazy: rs.filter((r) => r.correct_lazy).length / rs.length,
        ttft_dense_ms: median(rs.map((r) => r.ttft_dense_ms)),
        ttft_lazy_ms: median(rs.map((r) => r.ttft_lazy_ms)),
        ttft_speedup: median(rs.map((r) => r.ttft_dense_ms / r.ttft_lazy_ms)),
      };
    }
  }
  return out;
}

export interface ModeRun {
  text: string;
  /** next-token logits at the end of the prompt */
  firstLogits: Float32Array;
  prefill_ms: number;
  /** prefill FLOPs against dense's for the same prompt (1 for dense) */
  prefill_flops_ratio: number;
}

/**
 * Prefill and greedy decode with one schedule (null = dense), keeping the first logits for KL;
 * `question` ranks the prompt under signal:query. (generate() does not hand out the first logits.)
 */
export async function runMode(
  model: LoadedModel,
  prompt: number[],
  schedule: Schedule | null,
  maxTokens: number,
  question: TokenSpan | null = null,
): Promise<ModeRun> {
  const decoder = model.tokenizer.createDecoder({ prev: prompt[prompt.length - 1] });
  let first: DecodeStep | undefined;
  let text = '';
  for await (const s of decodeLoop(model, new SequenceState(model.config), prompt, { schedule, question })) {
    first ??= s;
    if (s.index >= maxTokens || model.tokenizer.endIds.has(s.token)) break;
    text += decoder.push(s.token);
    if (s.index + 1 === maxTokens) break;
  }
  const { logits, stats } = first!;
  return {
    text: text + decoder.flush(),
    firstLogits: logits,
    prefill_ms: stats.ms,
    prefill_flops_ratio: stats.flops / stats.denseFlops,
  };
}

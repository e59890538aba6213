import type { FinishReason, GenerationStats } from '../../engine/generate.js';
import type { Usage } from '../job/plan.js';
import { chatLogprobs } from '../job/logprobs.js';
import type { Outcome } from '../job/run.js';
import { completionId, type Shapes } from './respond.js';

/**
 * The objects of /v1/chat/completions, stateless (routes/chat.ts) or with a session
 * (routes/sessions.ts, which adds `session` to the whole answer and to the last chunk). `id`,
 * `created` and `model` are the same in every chunk of one answer.
 */
export function chatShapes(model: string) {
  const id = completionId('chatcmpl');
  const created = Math.floor(Date.now() / 1000);
  const base = () => ({ id, created, model });
  const chunk = (delta: object, finish: string | null, lps: object | null = null) => ({
    ...base(),
    object: 'chat.completion.chunk' as const,
    choices: [{ index: 0, delta, logprobs: lps, finish_reason: finish }],
  });
  return {
    whole: (o: Outcome, extra: object = {}) => ({
      ...base(),
      object: 'chat.completion' as const,
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content: o.text, refusal: null },
          logprobs: o.logprobs ? chatLogprobs(o.logprobs) : null,
          finish_reason: o.finishReason,
        },
      ],
      usage: o.usage,
      lazy_stats: o.stats,
      ...extra,
    }),
    opening: () => chunk({ role: 'assistant', content: '' }, null),
    delta: (t, lps) => chunk({ content: t }, null, lps ? chatLogprobs(lps) : null),
    finish: (reason: FinishReason, stats: GenerationStats, extra: object = {}) => ({
      ...chunk({}, reason),
      lazy_stats: stats,
      ...extra,
    }),
    usage: (u: Usage) => ({ ...base(), object: 'chat.completion.chunk' as const, choices: [], usage: u }),
  } satisfies Shapes;
}

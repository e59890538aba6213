import type { LoadedModel } from '../../engine/model.js';
import { encodeChat } from '../../model/chat-prompt.js';
import type { Env } from '../env.js';
import type { ChatRequest } from '../http/schemas.js';
import { planJob, type Job } from './plan.js';

/**
 * A stateless chat request as an engine job: the whole conversation rendered with the manifest's
 * chat template and encoded with BOS like any prompt, then planned (plan.ts). Without max_tokens the
 * reply may use the rest of the context. POST /v1/chat/completions (routes/chat.ts) and the
 * playground's "run in this browser" (src/playground/in-browser.ts) both plan with it, so a page
 * running the model itself uses the server's chat template, defaults and LazyLLM schedule.
 */
export function planChatJob(
  env: Partial<Env>,
  startedAt: number,
  model: LoadedModel,
  body: ChatRequest,
  logprobs: number | null,
): Job {
  const { prompt, question } = encodeChat(model.tokenizer, model.manifest.chatTemplate, body.messages);
  const maxTokensParam = body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
  return planJob(env, startedAt, model, prompt, body, {
    promptParam: 'messages',
    maxTokensParam,
    maxTokens: body.max_completion_tokens ?? body.max_tokens,
    defaultMaxTokens: Math.max(1, model.config.seqLen - prompt.length),
    logprobs,
    question,
  });
}

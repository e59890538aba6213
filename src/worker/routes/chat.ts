import { Hono } from 'hono';
import type { AppEnv } from '../app-env.js';
import { renderChat } from '../chat-template.js';
import { completionId, planJob, respond, servedModel } from '../generation.js';
import { chatLogprobs } from '../logprobs.js';
import { chatSchema, chatTopLogprobs, readJson, validate } from '../schemas.js';
import { sessionChat } from './sessions.js';
import { encodePrompt } from '../../model/text-tokenizer.js';

/**
 * POST /v1/chat/completions, stateless: the whole conversation comes with every request and is
 * rendered with the manifest's chat template, then encoded with BOS like any prompt. Without
 * max_tokens the reply may use the rest of the context.
 */
export const chat = new Hono<AppEnv>().post('/', async (c) => {
  const startedAt = performance.now();
  const body = validate(chatSchema, await readJson(c.req.raw));
  const logprobs = chatTopLogprobs(body);
  const sessionId = body.session_id ?? c.req.header('x-session-id');
  if (sessionId) return sessionChat(c, body, sessionId);
  const model = await servedModel(c.env, body.model);
  const prompt = encodePrompt(model.tokenizer, renderChat(model.manifest.chatTemplate, body.messages));
  const maxTokensParam = body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
  const job = planJob(c.env, startedAt, model, prompt, body, {
    promptParam: 'messages',
    maxTokensParam,
    maxTokens: body.max_completion_tokens ?? body.max_tokens,
    defaultMaxTokens: Math.max(1, model.config.seqLen - prompt.length),
    logprobs,
  });
  const id = completionId('chatcmpl');
  const created = Math.floor(Date.now() / 1000);
  const base = () => ({ id, created, model: body.model });
  const chunk = (delta: object, finish: string | null, lps: object | null = null) => ({
    ...base(),
    object: 'chat.completion.chunk' as const,
    choices: [{ index: 0, delta, logprobs: lps, finish_reason: finish }],
  });
  return respond(c, job, body, {
    whole: (o) => ({
      ...base(),
      object: 'chat.completion' as const,
      choices: [{ index: 0, message: { role: 'assistant', content: o.text, refusal: null }, logprobs: o.logprobs ? chatLogprobs(o.logprobs) : null, finish_reason: o.finishReason }],
      usage: o.usage,
      lazy_stats: o.stats,
    }),
    opening: () => chunk({ role: 'assistant', content: '' }, null),
    delta: (t, lps) => chunk({ content: t }, null, lps ? chatLogprobs(lps) : null),
    finish: (reason, stats) => ({ ...chunk({}, reason), lazy_stats: stats }),
    usage: (u) => ({ ...base(), object: 'chat.completion.chunk' as const, choices: [], usage: u }),
  });
});

import { Hono } from 'hono';
import type { AppEnv } from '../app-env.js';
import { encodeChat } from '../../../model/chat-prompt.js';
import { chatShapes } from '../chat-shapes.js';
import { planJob } from '../../job/plan.js';
import { respond, servedModel } from '../respond.js';
import { chatSchema, chatTopLogprobs, readJson, validate } from '../schemas.js';
import { sessionChat } from './sessions.js';

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
  const { prompt, question } = encodeChat(model.tokenizer, model.manifest.chatTemplate, body.messages);
  const maxTokensParam = body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
  const job = planJob(c.env, startedAt, model, prompt, body, {
    promptParam: 'messages',
    maxTokensParam,
    maxTokens: body.max_completion_tokens ?? body.max_tokens,
    defaultMaxTokens: Math.max(1, model.config.seqLen - prompt.length),
    logprobs,
    question,
  });
  return respond(c, job, body, chatShapes(body.model));
});

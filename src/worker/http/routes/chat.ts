import { Hono } from 'hono';
import type { AppEnv } from '../app-env.js';
import { chatShapes } from '../chat-shapes.js';
import { planChatJob } from '../../job/chat-job.js';
import { respond, servedModel } from '../respond.js';
import { chatSchema, chatTopLogprobs, readJson, validate } from '../schemas.js';
import { sessionChat } from './sessions.js';

/**
 * POST /v1/chat/completions, stateless: the whole conversation comes with every request
 * (job/chat-job.ts plans it); with a session id, the session's Durable Object continues it.
 */
export const chat = new Hono<AppEnv>().post('/', async (c) => {
  const startedAt = performance.now();
  const body = validate(chatSchema, await readJson(c.req.raw));
  const logprobs = chatTopLogprobs(body);
  const sessionId = body.session_id ?? c.req.header('x-session-id');
  if (sessionId) return sessionChat(c, body, sessionId);
  const model = await servedModel(c.env, body.model);
  const job = planChatJob(c.env, startedAt, model, body, logprobs);
  return respond(c, job, body, chatShapes(body.model));
});

import { Hono, type Context } from 'hono';
import { z } from 'zod';
import type { AppEnv } from '../app-env.js';
import { apiKeyId } from '../auth.js';
import type { Failure, TurnEvent, TurnOutcome, TurnRequest } from '../../session/types.js';
import { chatShapes } from '../chat-shapes.js';
import { ApiError, fromFailure } from '../errors.js';
import { checkModelName, waitUntilOf, withNullUsage } from '../respond.js';
import { chatSchema, chatTopLogprobs, messageSchema, readJson, validate, type ChatRequest } from '../schemas.js';
import { configOf } from '../../config.js';
import { retryHeaders } from '../../faults.js';
import { ClientGone, sseResponse, type SendComment, type SendEvent } from '../sse.js';

/**
 * Chat sessions over HTTP: the routes validate, find the caller's Durable Object and shape
 * OpenAI-style objects; the object (src/worker/session/chat-session.ts) holds the state and runs the turn.
 *
 *   POST   /v1/sessions               {messages?}                     -> the new session
 *   GET    /v1/sessions/:id                                           -> messages + cache statistics
 *   DELETE /v1/sessions/:id
 *   POST   /v1/sessions/:id/messages  {content, max_tokens, ...}     -> the reply, as a chat completion
 *   POST   /v1/chat/completions       with session_id or x-session-id (see `sessionChat`)
 *
 * A session belongs to the API key that created it: the object is named by key id and session id,
 * so under another key the same id names an empty object and the answer is 404.
 */

const ID_PATTERN = /^sess_[0-9a-f]{32}$/;

export function newSessionId(): string {
  return `sess_${crypto.randomUUID().replaceAll('-', '')}`;
}

function stub(c: Context<AppEnv>, id: string) {
  if (!ID_PATTERN.test(id))
    throw new ApiError(404, `No session '${id}' exists for this API key.`, 'session_not_found', 'session_id');
  const ns = c.env.CHAT_SESSIONS;
  return ns.get(ns.idFromName(`${apiKeyId(c)}/${id}`));
}

/**
 * The Idempotency-Key header (session/idempotency.ts): 1 to 255 visible ASCII characters, as the
 * keys of Stripe's API and of the IETF draft are; undefined when absent.
 */
function idempotencyKey(c: Context<AppEnv>): string | undefined {
  const key = c.req.header('idempotency-key');
  if (key === undefined) return undefined;
  if (!/^[\x21-\x7e]{1,255}$/.test(key)) {
    throw new ApiError(
      400,
      "Invalid value for 'Idempotency-Key': it must be 1 to 255 visible ASCII characters (a UUID is a good key).",
      'invalid_value',
      'Idempotency-Key',
    );
  }
  return key;
}

/** The object's Failure takes its HTTP form here, once. */
function raise(f: Failure): never {
  throw fromFailure(f, f.status === 409 ? { 'Retry-After': '1' } : retryHeaders(f));
}

const createSchema = z.object({ messages: z.array(messageSchema).optional() });

/** The options of a session message: chat's generation options, without model and messages. */
export const sessionMessageSchema = chatSchema
  .pick({
    max_tokens: true,
    max_completion_tokens: true,
    temperature: true,
    top_p: true,
    top_k: true,
    seed: true,
    stop: true,
    stream: true,
    stream_options: true,
    n: true,
    lazy: true,
    logprobs: true,
    top_logprobs: true,
    frequency_penalty: true,
    presence_penalty: true,
    repetition_penalty: true,
    user: true,
  })
  .extend({
    /** optional here (the session's model is the served one), but a wrong name is refused as everywhere else */
    model: z.string().optional(),
    content: messageSchema.shape.content,
    /** the message's role: "user" unless a system/developer note is appended */
    role: z.enum(['system', 'developer', 'user']).optional(),
  });

type Options = z.infer<typeof sessionMessageSchema> | ChatRequest;

/** Runs one turn in the session's object and answers like /v1/chat/completions (JSON or SSE). */
async function turnResponse(
  c: Context<AppEnv>,
  id: string,
  model: string,
  req: TurnRequest,
  o: Options,
): Promise<Response> {
  const obj = stub(c, id);
  const shapes = chatShapes(model);

  if (!o.stream) {
    const r = await obj.turn(id, req);
    if (!r.ok) raise(r);
    const out = r as TurnOutcome;
    const timing = `prefill;dur=${out.stats.prefill_ms.toFixed(2)}, decode;dur=${out.stats.decode_ms.toFixed(2)}`;
    return c.json(shapes.whole(out, { session: out.session }), 200, { 'Server-Timing': timing });
  }

  // Streaming: the object sends "start" once the request passed every check (until then a refusal
  // is an ordinary 4xx), then the text as it is released (and, prefilling, "progress": a comment
  // line); the events are written as SSE here. Once
  // the client hangs up, every later event is answered `false`, which makes the object
  // abandon the turn (state as before it) and free the session at once.
  let started!: () => void;
  const startedP = new Promise<null>((r) => (started = () => r(null)));
  let ready!: () => void;
  const readyP = new Promise<void>((r) => (ready = r));
  let send: SendEvent | null = null;
  let comment: SendComment | null = null;
  let gone: AbortSignal | null = null;
  const onEvent = async (e: TurnEvent): Promise<boolean> => {
    if (e.type === 'start') {
      started();
      return true;
    }
    await readyP;
    if (!send || !comment || gone?.aborted) return false;
    try {
      if (e.type === 'progress') await comment('prefilling');
      else await send(shapes.delta(e.text, e.logprobs));
      return true;
    } catch {
      return false; // the client hung up (ClientGone): the object abandons the turn
    }
  };
  const replyP = obj.turn(id, { ...req, keepAliveMs: configOf(c.env).keepAliveMs }, onEvent);
  replyP.catch(() => {}); // awaited below; this only keeps an early rejection from counting as unhandled
  const early = await Promise.race([startedP, replyP]);
  if (early && !early.ok) raise(early);
  return sseResponse(async (sendRaw, hangUp, sendComment) => {
    const s = withNullUsage(o, sendRaw);
    gone = hangUp;
    send = s;
    comment = sendComment;
    try {
      await s(shapes.opening());
    } catch (e) {
      // The client left before the first chunk: release the object's events all the same, so that
      // its next one fails and it abandons the turn (never waiting forever with the session busy),
      // and stay until it has, which keeps this request's callback alive for it.
      ready();
      await replyP.catch(() => undefined);
      throw e;
    }
    ready();
    let r: Awaited<typeof replyP>;
    try {
      r = await replyP;
    } catch (e) {
      if (hangUp.aborted) throw new ClientGone('the client closed the stream');
      throw e;
    }
    if (!r.ok && r.error.code === 'client_gone') throw new ClientGone(r.error.message);
    if (!r.ok) raise(r);
    const out = r as TurnOutcome;
    await s(shapes.finish(out.finishReason, out.stats, { session: out.session }));
    if (o.stream_options?.include_usage) await sendRaw(shapes.usage(out.usage));
  }, waitUntilOf(c));
}

/**
 * /v1/chat/completions with a session (`session_id` in the body or an `x-session-id` header): the
 * client sends the whole conversation as usual; the session keeps the longest token prefix it
 * already holds, forgets the rest, and computes only what is new. Its stored conversation becomes
 * the client's messages plus the reply.
 */
export async function sessionChat(c: Context<AppEnv>, body: ChatRequest, id: string): Promise<Response> {
  checkModelName(c.env, body.model);
  if (body.cache_prompt === false)
    throw new ApiError(
      400,
      "Invalid value for 'cache_prompt': false turns off the prefix cache of stateless requests, and a session always continues its own state. Drop session_id or cache_prompt.",
      'invalid_value',
      'cache_prompt',
    );
  const req: TurnRequest = {
    owner: apiKeyId(c),
    mode: 'replace',
    messages: body.messages,
    options: body,
    maxTokensParam: body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens',
    maxTokens: body.max_completion_tokens ?? body.max_tokens,
    logprobs: chatTopLogprobs(body),
    idempotencyKey: idempotencyKey(c),
  };
  return turnResponse(c, id, body.model, req, body);
}

export const sessions = new Hono<AppEnv>()
  .post('/', async (c) => {
    const text = await c.req.text();
    const body = validate(
      createSchema,
      text.trim() === '' ? {} : await readJson(new Request('http://x', { method: 'POST', body: text })),
    );
    const id = newSessionId();
    const r = await stub(c, id).create({
      id,
      owner: apiKeyId(c),
      messages: body.messages,
      split: {
        groups: configOf(c.env).split.groups,
        heads: configOf(c.env).split.heads,
        stepTokens: configOf(c.env).split.stepTokens,
      },
    });
    if (!r.ok) raise(r);
    return c.json({ object: 'chat.session', ...(r as { session: object }).session }, 200);
  })
  .get('/:id', async (c) => {
    const id = c.req.param('id');
    const r = await stub(c, id).get(apiKeyId(c), id);
    if (!r.ok) raise(r);
    return c.json({ object: 'chat.session', ...(r as { session: object }).session });
  })
  .delete('/:id', async (c) => {
    const id = c.req.param('id');
    const r = await stub(c, id).remove(apiKeyId(c), id);
    if (!r.ok) raise(r);
    return c.json({ id, object: 'chat.session.deleted', deleted: true });
  })
  .post('/:id/messages', async (c) => {
    const id = c.req.param('id');
    const json = await readJson(c.req.raw);
    // content's union type would report a missing value as an invalid one
    if (
      typeof json === 'object' &&
      json !== null &&
      !Array.isArray(json) &&
      (json as { content?: unknown }).content === undefined
    ) {
      throw new ApiError(400, "Missing required parameter: 'content'.", 'missing_required_parameter', 'content');
    }
    const body = validate(sessionMessageSchema, json);
    if (body.model !== undefined) checkModelName(c.env, body.model);
    const req: TurnRequest = {
      owner: apiKeyId(c),
      mode: 'append',
      messages: [{ role: body.role ?? 'user', content: body.content }],
      options: body,
      maxTokensParam: body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens',
      maxTokens: body.max_completion_tokens ?? body.max_tokens,
      logprobs: chatTopLogprobs(body),
      idempotencyKey: idempotencyKey(c),
    };
    return turnResponse(c, id, c.env.MODEL_NAME, req, body);
  });

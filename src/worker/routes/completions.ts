import { Hono } from 'hono';
import type { AppEnv } from '../app-env.js';
import { completionId, planJob, respond, servedModel } from '../generation.js';
import { completionSchema, readJson, validate } from '../schemas.js';
import { encodePrompt } from '../../model/text-tokenizer.js';

/** OpenAI's documented default for /v1/completions when max_tokens is not set. */
export const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;

/** POST /v1/completions: a prompt string, encoded with BOS exactly as `npm run generate` does. */
export const completions = new Hono<AppEnv>().post('/', async (c) => {
  const startedAt = performance.now();
  const body = validate(completionSchema, await readJson(c.req.raw));
  const model = await servedModel(c.env, body.model);
  const text = typeof body.prompt === 'string' ? body.prompt : body.prompt[0];
  const prompt = encodePrompt(model.tokenizer, text);
  const job = planJob(c.env, startedAt, model, prompt, body, {
    promptParam: 'prompt',
    maxTokensParam: 'max_tokens',
    defaultMaxTokens: COMPLETIONS_DEFAULT_MAX_TOKENS,
  });
  const id = completionId('cmpl');
  const created = Math.floor(Date.now() / 1000);
  const base = () => ({ id, object: 'text_completion' as const, created, model: body.model });
  return respond(c, job, body, {
    whole: (o) => ({
      ...base(),
      choices: [{ text: o.text, index: 0, logprobs: null, finish_reason: o.finishReason }],
      usage: o.usage,
      lazy_stats: o.stats,
    }),
    delta: (t) => ({ ...base(), choices: [{ text: t, index: 0, logprobs: null, finish_reason: null }] }),
    finish: (reason, stats) => ({ ...base(), choices: [{ text: '', index: 0, logprobs: null, finish_reason: reason }], lazy_stats: stats }),
    usage: (u) => ({ ...base(), choices: [], usage: u }),
  });
});

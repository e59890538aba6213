import { Hono } from 'hono';
import type { AppEnv } from '../app-env.js';
import { invalid } from '../errors.js';
import { planJob } from '../../job/plan.js';
import { completionId, respond, servedModel } from '../respond.js';
import { completionLogprobs } from '../../job/logprobs.js';
import { completionSchema, completionTopLogprobs, readJson, validate, type CompletionRequest } from '../schemas.js';
import { encodePrompt, type TextTokenizer } from '../../../model/text-tokenizer.js';

/** OpenAI's documented default for /v1/completions when max_tokens is not set. */
export const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;

/**
 * The prompt's tokens: a string is encoded with BOS exactly as `npm run generate` does; token ids
 * are used as given (no BOS added), each checked against the vocabulary.
 */
function promptTokens(tok: TextTokenizer, prompt: CompletionRequest['prompt']): number[] {
  // a list holding one prompt (a string or a list of ids) stands for that prompt
  const nested = Array.isArray(prompt) && typeof prompt[0] !== 'number';
  const one = nested ? (prompt[0] as string | number[]) : (prompt as string | number[]);
  if (typeof one === 'string') return encodePrompt(tok, one);
  const ids = one;
  const bad = ids.findIndex((t) => !Number.isInteger(t) || t < 0 || t >= tok.vocabSize);
  if (bad >= 0) {
    const param = nested ? `prompt[0][${bad}]` : `prompt[${bad}]`;
    throw invalid(
      `Invalid value for '${param}': ${ids[bad]} is not a token id of this model (an integer in [0, ${tok.vocabSize})).`,
      param,
    );
  }
  return [...ids];
}

/** POST /v1/completions: a prompt string (encoded with BOS) or a list of token ids. */
export const completions = new Hono<AppEnv>().post('/', async (c) => {
  const startedAt = performance.now();
  const body = validate(completionSchema, await readJson(c.req.raw));
  const model = await servedModel(c.env, body.model);
  const prompt = promptTokens(model.tokenizer, body.prompt);
  const job = planJob(c.env, startedAt, model, prompt, body, {
    promptParam: 'prompt',
    maxTokensParam: 'max_tokens',
    defaultMaxTokens: COMPLETIONS_DEFAULT_MAX_TOKENS,
    logprobs: completionTopLogprobs(body),
  });
  const id = completionId('cmpl');
  const created = Math.floor(Date.now() / 1000);
  const base = () => ({ id, object: 'text_completion' as const, created, model: body.model });
  return respond(c, job, body, {
    whole: (o) => ({
      ...base(),
      choices: [
        {
          text: o.text,
          index: 0,
          logprobs: o.logprobs ? completionLogprobs(o.logprobs) : null,
          finish_reason: o.finishReason,
        },
      ],
      usage: o.usage,
      lazy_stats: o.stats,
    }),
    delta: (t, lps) => ({
      ...base(),
      choices: [{ text: t, index: 0, logprobs: lps ? completionLogprobs(lps) : null, finish_reason: null }],
    }),
    finish: (reason, stats) => ({
      ...base(),
      choices: [{ text: '', index: 0, logprobs: null, finish_reason: reason }],
      lazy_stats: stats,
    }),
    usage: (u) => ({ ...base(), choices: [], usage: u }),
  });
});

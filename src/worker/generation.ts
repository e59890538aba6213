import type { Context } from 'hono';
import { SequenceState } from '../engine/caches.js';
import { EngineError } from '../engine/errors.js';
import { generate, type FinishReason, type GenerationStats } from '../engine/generate.js';
import type { LoadedModel } from '../engine/model.js';
import { defaultSchedule, parseSchedule, validateSchedule, type Schedule } from '../engine/policy.js';
import type { SamplerOptions } from '../engine/sampler.js';
import { TraceRecorder } from '../engine/trace.js';
import type { AppEnv } from './app-env.js';
import type { Env } from './env.js';
import { ApiError, ClientGone, invalid } from './errors.js';
import { getModel } from './model-store.js';
import { LogprobShaper, type ShapedLogprob } from './logprobs.js';
import type { LazyOptions } from './schemas.js';
import { sseResponse, type SendEvent } from './sse.js';

/**
 * What /v1/completions and /v1/chat/completions share: picking the model, turning OpenAI options
 * into engine options (context policy, sampler, schedule, time budget), and answering either as one
 * JSON body or as a stream of events. The routes only parse their bodies and shape their objects.
 */

/** The OpenAI options both endpoints accept, after validation. */
export interface CommonOptions {
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  n?: number | null;
  lazy?: LazyOptions | null;
}

export const DEFAULT_REQUEST_BUDGET_MS = 60_000;

/** REQUEST_BUDGET_MS as a number of milliseconds; a value that is not a number >= 0 is a deployment mistake. */
export function requestBudgetMs(env: Env): number {
  const raw = env.REQUEST_BUDGET_MS;
  if (raw === undefined || raw.trim() === '') return DEFAULT_REQUEST_BUDGET_MS;
  const ms = Number(raw);
  if (!Number.isFinite(ms) || ms < 0) throw new Error(`REQUEST_BUDGET_MS must be a number of milliseconds >= 0, got "${raw}"`);
  return ms;
}

/** The served model, loaded once per isolate; any other name is a 404 like OpenAI's. */
export async function servedModel(env: Env, requested: string): Promise<LoadedModel> {
  if (requested !== env.MODEL_NAME) {
    throw new ApiError(404, `The model '${requested}' does not exist. This server serves '${env.MODEL_NAME}'.`, 'model_not_found', 'model');
  }
  return getModel(env);
}

function resolveSchedule(lazy: LazyOptions | null | undefined, nLayers: number): Schedule | null {
  if (lazy?.enabled === false) {
    if (lazy.schedule !== undefined) throw invalid('lazy.schedule was given with lazy.enabled false; drop one of them', 'lazy.schedule');
    return null;
  }
  const spec = lazy?.schedule;
  try {
    const s =
      spec === undefined ? defaultSchedule(nLayers)
      : typeof spec === 'string' ? parseSchedule(spec)
      : { prune: spec.prune, keepFirst: spec.keep_first ?? false, ...(spec.min_active === undefined ? {} : { minActive: spec.min_active }) };
    return validateSchedule(s, nLayers);
  } catch (e) {
    if (e instanceof EngineError) throw new ApiError(400, e.message, e.code, 'lazy.schedule');
    throw e;
  }
}

function randomSeed(): number {
  const [a] = crypto.getRandomValues(new Uint32Array(1));
  return a || 1;
}

export interface Job {
  model: LoadedModel;
  prompt: number[];
  maxTokens: number;
  sampler: SamplerOptions;
  stop: string[];
  schedule: Schedule | null;
  /** performance.now() after which no new token is started */
  deadline: number;
  /** lazy.trace: attach a TraceRecorder's record to the stats */
  trace: boolean;
  /** logprobs requested: how many alternatives per token (0 = the token's own only); null = off */
  logprobs: number | null;
}

/**
 * Turns validated options into an engine job. Context policy: the prompt's tokens (BOS included)
 * plus max_tokens must fit in the model's trained context (config.seqLen, 512 for stories260K);
 * `defaultMaxTokens` is used when the client sets none.
 */
export function planJob(
  env: Env,
  startedAt: number,
  model: LoadedModel,
  prompt: number[],
  o: CommonOptions,
  at: { promptParam: string; maxTokensParam: string; maxTokens?: number | null; defaultMaxTokens: number; logprobs?: number | null },
): Job {
  if (o.n != null && o.n !== 1) throw invalid(`n must be 1: this server returns one choice per request (got ${o.n})`, 'n');
  const ctx = model.config.seqLen;
  const requested = at.maxTokens ?? o.max_tokens;
  if (requested != null && requested > ctx - 1) {
    throw invalid(`${at.maxTokensParam} is too large: ${requested}. This model's context is ${ctx} tokens, so at most ${ctx - 1} can be generated.`, at.maxTokensParam);
  }
  const maxTokens = requested ?? at.defaultMaxTokens;
  if (prompt.length + maxTokens > ctx) {
    throw new ApiError(
      400,
      `This model's maximum context length is ${ctx} tokens. However, you requested ${prompt.length + maxTokens} tokens ` +
        `(${prompt.length} in the ${at.promptParam}, ${maxTokens} for the completion). Please reduce the length of the ${at.promptParam} or ${at.maxTokensParam}.`,
      'context_length_exceeded',
      at.promptParam,
    );
  }
  const topP = o.top_p ?? 1;
  return {
    model,
    prompt,
    maxTokens,
    // top_p 0 asks for the single most likely token: greedy decoding (the sampler needs top_p > 0).
    sampler: { temperature: topP === 0 ? 0 : (o.temperature ?? 1), topP: topP === 0 ? 1 : topP, topK: o.top_k ?? 0, seed: o.seed ?? randomSeed() },
    stop: o.stop == null ? [] : typeof o.stop === 'string' ? [o.stop] : o.stop,
    schedule: resolveSchedule(o.lazy, model.config.nLayers),
    deadline: startedAt + requestBudgetMs(env),
    trace: o.lazy?.trace === true,
    logprobs: at.logprobs ?? null,
  };
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** prompt tokens whose state was reused rather than computed: 0 without a session */
  prompt_tokens_details: { cached_tokens: number };
}

export interface Outcome {
  text: string;
  finishReason: FinishReason;
  usage: Usage;
  stats: GenerationStats;
  /** when the job asked for logprobs: one per completion token */
  logprobs?: ShapedLogprob[];
}

/** How an endpoint shapes its objects; `id`, `created` and `model` are the same in every chunk. */
export interface Shapes {
  whole(o: Outcome): object;
  /** chat sends the assistant role before any text */
  opening?(): object;
  /** `logprobs`: those of the tokens released with this text, when the job asked for them */
  delta(text: string, logprobs?: ShapedLogprob[]): object;
  finish(reason: FinishReason, stats: GenerationStats): object;
  usage(u: Usage): object;
}

/**
 * A zero-delay timer between tokens of every generation, streamed or not. It costs about 10 us and
 * lets other requests in the isolate take turns: an awaited stream write resolves as a microtask,
 * which alone would hold /healthz and every other request back until the stream ends. It also
 * gives the clock a chance to move: deployed Workers advance performance.now() only when an event
 * such as I/O arrives, and the request budget is checked against that clock.
 */
export const yieldToEventLoop = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/** Between tokens: yield, then stop (with the signal's reason) if the client has hung up. */
export function betweenTokens(gone?: AbortSignal): () => Promise<void> {
  return async () => {
    await yieldToEventLoop();
    if (gone?.aborted) throw new ClientGone('the client hung up; generation stopped');
  };
}

async function run(job: Job, beforeStep: () => Promise<void>, onText?: (t: string, logprobs?: ShapedLogprob[]) => Promise<void>): Promise<Outcome> {
  const seq = new SequenceState(job.model.config);
  const tracer = job.trace ? new TraceRecorder(job.model, seq) : undefined;
  const shaper = job.logprobs === null ? undefined : new LogprobShaper(job.model.tokenizer, job.prompt[job.prompt.length - 1]);
  const r = await generate(job.model, seq, job.prompt, {
    maxTokens: job.maxTokens,
    sampler: job.sampler,
    stop: job.stop,
    schedule: job.schedule,
    deadline: job.deadline,
    onText: onText && (shaper ? (t, lps) => onText(t, shaper.shape(lps)) : (t) => onText(t)),
    beforeStep,
    trace: tracer?.hook,
    ...(job.logprobs === null ? {} : { logprobs: { top: job.logprobs } }),
  });
  const usage = { prompt_tokens: r.promptTokens, completion_tokens: r.tokens.length, total_tokens: r.promptTokens + r.tokens.length, prompt_tokens_details: { cached_tokens: 0 } };
  const logprobs = shaper && !onText ? { logprobs: shaper.shape(r.logprobs) } : {};
  return { text: r.text, finishReason: r.finishReason, usage, stats: tracer ? { ...r.stats, trace: tracer.result() } : r.stats, ...logprobs };
}

/**
 * With stream_options.include_usage, OpenAI sends `"usage": null` in every chunk before the last
 * (usage) one; clients that check for the key rely on it.
 */
export function withNullUsage(o: CommonOptions, send: SendEvent): SendEvent {
  return o.stream_options?.include_usage ? (data) => send({ ...(data as object), usage: null }) : send;
}

/** The request's execution context's waitUntil, or undefined when the app is called directly (a test). */
export function waitUntilOf(c: Context<AppEnv>): ((p: Promise<unknown>) => void) | undefined {
  try {
    const ctx = c.executionCtx;
    return (p) => ctx.waitUntil(p);
  } catch {
    return undefined; // the open stream keeps the work alive
  }
}

/**
 * Runs the job and answers: one JSON body with a Server-Timing header, or with `stream` a text
 * delta per event as soon as the engine releases it, a last chunk with finish_reason and
 * `lazy_stats`, optionally a usage chunk (stream_options.include_usage), then [DONE]. A streamed
 * generation whose client hangs up stops before its next token.
 */
export async function respond(c: Context<AppEnv>, job: Job, o: CommonOptions, shapes: Shapes): Promise<Response> {
  if (!o.stream) {
    const out = await run(job, betweenTokens(c.req.raw.signal));
    const timing = `prefill;dur=${out.stats.prefill_ms.toFixed(2)}, decode;dur=${out.stats.decode_ms.toFixed(2)}`;
    return c.json(shapes.whole(out), 200, { 'Server-Timing': timing });
  }
  const produce = async (sendRaw: SendEvent, gone: AbortSignal) => {
    const send = withNullUsage(o, sendRaw);
    const opening = shapes.opening?.();
    if (opening) await send(opening);
    const out = await run(job, betweenTokens(gone), (t, lps) => send(shapes.delta(t, lps)));
    await send(shapes.finish(out.finishReason, out.stats));
    if (o.stream_options?.include_usage) await sendRaw(shapes.usage(out.usage));
  };
  return sseResponse(produce, waitUntilOf(c));
}

export function completionId(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().replaceAll('-', '')}`;
}

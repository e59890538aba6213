import type { Context } from 'hono';
import { SequenceState } from '../../engine/caches.js';
import type { FinishReason, GenerationStats } from '../../engine/generate.js';
import type { LoadedModel } from '../../engine/model.js';
import type { AppEnv } from './app-env.js';
import type { Env } from '../env.js';
import { ApiError, ClientGone } from './errors.js';
import { yieldToEventLoop, type CommonOptions, type Job, type Usage } from '../job/plan.js';
import type { ShapedLogprob } from '../job/logprobs.js';
import { budgetPath, runJob, type Outcome, type Runner } from '../job/run.js';
import { checkBudget } from '../job/budget.js';
import { acquirePoolChain, type Chain } from '../groups/chain.js';
import { heldModel } from '../groups/parts.js';
import { prefillKeepAlive } from '../job/keep-alive.js';
import { configOf } from '../config.js';
import { isolatePrefixCache, MIN_PREFIX_MATCH } from '../job/prefix-cache.js';
import type { PrefixCache, PrefixLease } from '../../engine/prefix-cache.js';
import { sseResponse, type SendComment, type SendEvent } from './sse.js';

/**
 * The HTTP side of generation, used only by the routes: checking the model name, running a
 * stateless job (job.ts) and answering either as one JSON body or as a stream of events. The routes
 * only parse their bodies and shape their objects (chat-shapes.ts for chat).
 */

/** Any name but the configured one is a 404 like OpenAI's; checked against configuration, nothing loaded. */
export function checkModelName(env: Pick<Env, 'MODEL_NAME'>, requested: string): void {
  if (requested !== env.MODEL_NAME) {
    throw new ApiError(
      404,
      `The model '${requested}' does not exist. This server serves '${env.MODEL_NAME}'.`,
      'model_not_found',
      'model',
    );
  }
}

/** The served model as this isolate holds it (heldModel), after `checkModelName`. */
export async function servedModel(env: Env, requested: string): Promise<LoadedModel> {
  checkModelName(env, requested);
  return heldModel(env);
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

/** Between tokens: yield, then stop (with the signal's reason) if the client has hung up. */
export function betweenTokens(gone?: AbortSignal): () => Promise<void> {
  return async () => {
    await yieldToEventLoop();
    if (gone?.aborted) throw new ClientGone('the client hung up; generation stopped');
  };
}

/** What a request holds while it runs: a runner, and the chain or the prefix cache's lease it gives back. */
interface Taken {
  runner: Runner;
  chain: Chain | null;
  /** the whole model here with the prefix cache on: the state lent by the isolate's cache */
  cached: { cache: PrefixCache; lease: PrefixLease } | null;
  /** split with the prefix cache on: the bytes each group may keep of a finished request's state */
  keepUpTo?: number;
}

/**
 * How this request's layers run: the whole model here on a state the isolate's prefix cache lends
 * (the longest cached prefix, or a fresh one), or a chain of groups held for it (released by `run`).
 * Refused before anything runs when its prefill cannot finish within the budget (job/budget.ts).
 */
async function take(env: Env, job: Job): Promise<Taken> {
  const { split, prefixCacheBytes } = configOf(env);
  if (split.groups > 1) {
    // Split, the cache lives where the layers run: each group keeps a finished request's state (chain.ts).
    checkBudget(job, 0, budgetPath(job, true));
    const keepUpTo = job.cachePrompt ? prefixCacheBytes : 0;
    const chain = await acquirePoolChain(env, job.model.config, keepUpTo > 0 ? job.prompt : undefined);
    const seq = chain.frontState();
    if (chain.held >= MIN_PREFIX_MATCH) seq.append(job.prompt.slice(0, chain.held));
    return { runner: chain.jobRunner(seq), chain, cached: null, keepUpTo };
  }
  const cache = job.cachePrompt ? isolatePrefixCache(env, job.model) : null;
  if (!cache) {
    checkBudget(job, 0, budgetPath(job, false));
    return { runner: { seq: new SequenceState(job.model.config) }, chain: null, cached: null };
  }
  const lease = cache.lease(job.prompt, job.prompt.length + job.maxTokens);
  try {
    checkBudget(job, lease.matched, budgetPath(job, false));
  } catch (e) {
    cache.restore(lease); // untouched: nothing ran
    throw e;
  }
  return { runner: { seq: lease.seq }, chain: null, cached: { cache, lease } };
}

/** Runs the job on what was taken, then gives it back: a cached state only when the job finished. */
async function run(
  job: Job,
  taken: Taken,
  beforeStep: () => Promise<void>,
  onText?: (t: string, logprobs?: ShapedLogprob[]) => Promise<void>,
  onPrefillProgress?: () => Promise<void>,
): Promise<Outcome> {
  const { cached } = taken;
  let finished = false;
  try {
    const { outcome } = await runJob(job, taken.runner, { beforeStep, onText, onPrefillProgress });
    finished = true;
    if (!cached) return outcome;
    cached.cache.restore(cached.lease);
    const f = cached.cache.figures();
    return { ...outcome, stats: { ...outcome.stats, prefix_cache: { entries: f.entries, bytes: f.bytes } } };
  } finally {
    if (cached && !finished) cached.cache.discard(cached.lease);
    const keepUpTo = taken.keepUpTo ?? 0;
    await taken.chain?.release(
      finished && keepUpTo > 0 ? { tokens: taken.runner.seq.tokens, upTo: keepUpTo } : undefined,
    );
  }
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
 * `lazy_stats`, optionally a usage chunk (stream_options.include_usage), then [DONE]; while it
 * prefills, a comment line now and then (keep-alive.ts). A streamed generation whose client hangs
 * up stops before its next token (or, prefilling, its next layer or group call).
 */
export async function respond(c: Context<AppEnv>, job: Job, o: CommonOptions, shapes: Shapes): Promise<Response> {
  // Taken before answering, so that a busy pool or a budget refusal is a plain 503 rather than an error inside a stream.
  const taken = await take(c.env, job);
  if (!o.stream) {
    const out = await run(job, taken, betweenTokens(c.req.raw.signal));
    const timing = `prefill;dur=${out.stats.prefill_ms.toFixed(2)}, decode;dur=${out.stats.decode_ms.toFixed(2)}`;
    return c.json(shapes.whole(out), 200, { 'Server-Timing': timing });
  }
  const produce = async (sendRaw: SendEvent, gone: AbortSignal, comment: SendComment) => {
    const send = withNullUsage(o, sendRaw);
    const opening = shapes.opening?.();
    if (opening) await send(opening);
    const keepAlive = prefillKeepAlive(() => comment('prefilling'), configOf(c.env).keepAliveMs);
    const out = await run(job, taken, betweenTokens(gone), (t, lps) => send(shapes.delta(t, lps)), keepAlive);
    await send(shapes.finish(out.finishReason, out.stats));
    if (o.stream_options?.include_usage) await sendRaw(shapes.usage(out.usage));
  };
  return sseResponse(produce, waitUntilOf(c));
}

export function completionId(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().replaceAll('-', '')}`;
}

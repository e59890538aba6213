import { EngineError } from '../../engine/errors.js';
import type { GenerateOptions } from '../../engine/generate.js';
import type { LoadedModel } from '../../engine/model.js';
import {
  defaultSchedule,
  parseSchedule,
  validateSchedule,
  type Schedule,
  type TokenSpan,
} from '../../engine/policy.js';
import { REPETITION_WINDOW, type SamplerOptions } from '../../engine/sampler.js';
import { RequestError } from '../faults.js';
import { configOf } from '../config.js';
import type { Env } from '../env.js';

/**
 * A request as an engine job, without HTTP: the OpenAI options both endpoints accept turned into
 * engine options (context policy, sampler, schedule, time budget). Used by the stateless routes
 * (through respond.ts) and by the chat session's Durable Object alike; refusals are RequestErrors,
 * which take their HTTP form at the edge.
 */

/** The `lazy` extension of a request, after validation (src/worker/http/schemas.ts checks it has this shape). */
export interface LazyOptions {
  /** false = dense inference; default true */
  enabled?: boolean;
  /** default: the engine's measured default schedule for the model */
  schedule?: string | { prune: { layer: number; keep: number }[]; keep_first?: boolean; min_active?: number };
  /** adds `lazy_stats.trace`: what each layer computed at prefill and what decode revived (src/engine/trace.ts) */
  trace?: boolean;
}

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
  frequency_penalty?: number | null;
  presence_penalty?: number | null;
  repetition_penalty?: number | null;
  /** llama.cpp's name: false = this request neither reuses nor leaves a cached prefix (stateless requests only) */
  cache_prompt?: boolean | null;
}

const invalid = (message: string, param: string) => new RequestError(message, 'invalid_value', param);

/**
 * The request's schedule, or the default for its kind: a chat request with a question ranks by the
 * question (signal:query), anything else by the window ending the prompt (policy.ts defaultSchedule).
 */
function resolveSchedule(
  lazy: LazyOptions | null | undefined,
  nLayers: number,
  question: TokenSpan | null,
): Schedule | null {
  if (lazy?.enabled === false) {
    if (lazy.schedule !== undefined)
      throw invalid('lazy.schedule was given with lazy.enabled false; drop one of them', 'lazy.schedule');
    return null;
  }
  const spec = lazy?.schedule;
  try {
    const s =
      spec === undefined
        ? defaultSchedule(nLayers, question ? 'question' : 'text')
        : typeof spec === 'string'
          ? parseSchedule(spec)
          : {
              prune: spec.prune,
              keepFirst: spec.keep_first ?? false,
              ...(spec.min_active === undefined ? {} : { minActive: spec.min_active }),
            };
    if (s.signal?.kind === 'query' && !question) {
      throw new EngineError(
        'signal:query ranks by the question, the last paragraph of the final user message, and this request has none: use signal:window:K for text without a question',
        'invalid_schedule',
        'schedule',
      );
    }
    return validateSchedule(s, nLayers);
  } catch (e) {
    if (e instanceof EngineError) throw new RequestError(e.message, e.code, 'lazy.schedule');
    throw e;
  }
}

/** The request's penalties for the sampler; none when all are off, so the sampler's plain path runs. */
function penalties(o: CommonOptions, prompt: readonly number[]): Partial<SamplerOptions> {
  const [frequencyPenalty, presencePenalty, repetitionPenalty] = [
    o.frequency_penalty ?? 0,
    o.presence_penalty ?? 0,
    o.repetition_penalty ?? 1,
  ];
  if (frequencyPenalty === 0 && presencePenalty === 0 && repetitionPenalty === 1) return {};
  return {
    frequencyPenalty,
    presencePenalty,
    repetitionPenalty,
    ...(repetitionPenalty === 1 ? {} : { penaltyContext: prompt.slice(-REPETITION_WINDOW) }),
  };
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
  /** [from, to) prompt tokens of the question (chat requests with one: src/model/chat-prompt.ts encodeChat) */
  question: TokenSpan | null;
  /** performance.now() after which no new token is started */
  deadline: number;
  /** lazy.trace: attach a TraceRecorder's record to the stats */
  trace: boolean;
  /** logprobs requested: how many alternatives per token (0 = the token's own only); null = off */
  logprobs: number | null;
  /** a stateless job may reuse, and leaves, a cached prefix (cache_prompt, default true; job/prefix-cache.ts) */
  cachePrompt: boolean;
}

/**
 * Turns validated options into an engine job. Context policy: the prompt's tokens (BOS included)
 * plus max_tokens must fit in the model's trained context (config.seqLen, 512 for stories260K);
 * `defaultMaxTokens` is used when the client sets none.
 */
export function planJob(
  env: Partial<Env>,
  startedAt: number,
  model: LoadedModel,
  prompt: number[],
  o: CommonOptions,
  at: {
    promptParam: string;
    maxTokensParam: string;
    maxTokens?: number | null;
    defaultMaxTokens: number;
    logprobs?: number | null;
    question?: TokenSpan | null;
  },
): Job {
  if (o.n != null && o.n !== 1)
    throw invalid(`n must be 1: this server returns one choice per request (got ${o.n})`, 'n');
  const ctx = model.config.seqLen;
  const requested = at.maxTokens ?? o.max_tokens;
  if (requested != null && requested > ctx - 1) {
    throw invalid(
      `${at.maxTokensParam} is too large: ${requested}. This model's context is ${ctx} tokens, so at most ${ctx - 1} can be generated.`,
      at.maxTokensParam,
    );
  }
  const maxTokens = requested ?? at.defaultMaxTokens;
  if (prompt.length + maxTokens > ctx) {
    throw new RequestError(
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
    sampler: {
      temperature: topP === 0 ? 0 : (o.temperature ?? 1),
      topP: topP === 0 ? 1 : topP,
      topK: o.top_k ?? 0,
      seed: o.seed ?? randomSeed(),
      ...penalties(o, prompt),
    },
    stop: o.stop == null ? [] : typeof o.stop === 'string' ? [o.stop] : o.stop,
    schedule: resolveSchedule(o.lazy, model.config.nLayers, at.question ?? null),
    question: at.question ?? null,
    deadline: startedAt + configOf(env).requestBudgetMs,
    trace: o.lazy?.trace === true,
    logprobs: at.logprobs ?? null,
    cachePrompt: o.cache_prompt !== false,
  };
}

/** The job's part of the engine's options (the caller adds its hooks: onText, beforeStep, trace). */
export function engineOptions(
  job: Job,
): Pick<GenerateOptions, 'maxTokens' | 'sampler' | 'stop' | 'schedule' | 'question' | 'deadline' | 'logprobs'> {
  return {
    maxTokens: job.maxTokens,
    sampler: job.sampler,
    stop: job.stop,
    schedule: job.schedule,
    question: job.question,
    deadline: job.deadline,
    ...(job.logprobs === null ? {} : { logprobs: { top: job.logprobs } }),
  };
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** prompt tokens whose state was reused rather than computed (a session's, or the prefix cache's) */
  prompt_tokens_details: { cached_tokens: number };
}

/**
 * A zero-delay timer between tokens of every generation, streamed or not. It costs about 10 us and
 * lets other requests in the isolate take turns: an awaited stream write resolves as a microtask,
 * which alone would hold /healthz and every other request back until the stream ends. It also
 * gives the clock a chance to move: deployed Workers advance performance.now() only when an event
 * such as I/O arrives, and the request budget is checked against that clock.
 */
export const yieldToEventLoop = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

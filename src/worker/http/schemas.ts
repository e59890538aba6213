import { z } from 'zod';
import type { ChatMessage } from '../../model/chat-prompt.js';
import type { LazyOptions } from '../job/plan.js';
import { ApiError } from './errors.js';

/**
 * Request bodies of the HTTP API, validated with zod. Field names and ranges follow OpenAI's
 * documentation; `lazy`, `top_k` and `repetition_penalty` are extensions. A top-level field the
 * server does not know is refused (unknown_parameter), and OpenAI fields it cannot honour are
 * refused unless they hold their "off" value (UNSUPPORTED): a request is honoured as written or not
 * at all, never run with a setting silently dropped (a misspelt `temprature` would otherwise sample
 * at temperature 1 without a word).
 */

/** A pruning schedule as the engine's text spec ("bos,1:0.5,3:0.5", "all") or as an object. */
export const scheduleSchema = z.union(
  [
    z.string(),
    z
      .object({
        prune: z.array(z.object({ layer: z.number().int(), keep: z.number() }).strict()),
        keep_first: z.boolean().optional(),
        min_active: z.number().int().optional(),
      })
      .strict(),
  ],
  {
    errorMap: () => ({
      message:
        'schedule must be a spec string like "bos,1:0.5,3:0.5" or {"prune": [{"layer": 1, "keep": 0.5}], "keep_first": true}',
    }),
  },
);

export const lazySchema = z
  .object({
    /** false = dense inference; default true */
    enabled: z.boolean().optional(),
    /** default: the engine's measured default schedule for the model */
    schedule: scheduleSchema.optional(),
    /** adds `lazy_stats.trace`: what each layer computed at prefill and what decode revived (src/engine/trace.ts) */
    trace: z.boolean().optional(),
  })
  .strict();
lazySchema satisfies z.ZodType<LazyOptions>;

const MAX_STOPS = 4;

/** Options shared by /v1/completions and /v1/chat/completions. nullish: OpenAI clients may send null for "default". */
const generationFields = {
  model: z.string({ required_error: 'you must provide a model parameter' }),
  max_tokens: z.number().int().min(1).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  top_k: z.number().int().min(0).nullish(),
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullish(),
  stop: z
    .union([z.string(), z.array(z.string()).max(MAX_STOPS, `at most ${MAX_STOPS} stop sequences`)], {
      errorMap: () => ({ message: `stop must be a string or a list of up to ${MAX_STOPS} strings` }),
    })
    .nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
  n: z.number().int().min(1).nullish(),
  /** OpenAI's end-user id, for abuse monitoring: it changes no output, and nothing here logs it */
  user: z.string().nullish(),
  /** OpenAI's: logit[j] -= count[j] * frequency_penalty, count over the tokens generated so far */
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  /** OpenAI's: logit[j] -= presence_penalty once token j was generated */
  presence_penalty: z.number().min(-2).max(2).nullish(),
  /** llama.cpp's repeat penalty over the last 64 tokens, prompt included (src/engine/sampler.ts); 1 = off */
  repetition_penalty: z.number().gt(0, 'repetition_penalty must be greater than 0 (1 is off)').nullish(),
  lazy: lazySchema.nullish(),
  /** llama.cpp's: false = no prefix cache for this request (src/worker/job/prefix-cache.ts) */
  cache_prompt: z.boolean().nullish(),
};

/** Token ids as given (no BOS added); checked against the vocabulary once the model is known. */
const tokenIds = z.array(z.number()).min(1);

export const completionSchema = z.object({
  ...generationFields,
  /** one string or one list of token ids; OpenAI's list forms are accepted when they hold exactly one prompt */
  prompt: z.union([z.string(), z.tuple([z.string()]), tokenIds, z.tuple([tokenIds])], {
    errorMap: () => ({
      message: 'prompt must be a string or a list of token ids (or a list holding exactly one of them)',
    }),
  }),
  /** the legacy logprobs: how many alternatives per token, 0..5 (false = off, as null) */
  logprobs: z
    .union([z.number().int().min(0).max(5), z.literal(false)], {
      errorMap: () => ({ message: 'logprobs must be an integer from 0 to 5' }),
    })
    .nullish(),
  /** chat's option; here logprobs: N says how many alternatives */
  top_logprobs: z
    .literal(0, {
      errorMap: () => ({
        message: 'top_logprobs is a chat option; /v1/completions takes logprobs: N (0..5) alternatives per token',
      }),
    })
    .nullish(),
});
export type CompletionRequest = z.infer<typeof completionSchema>;

const textPart = z.object({ type: z.literal('text'), text: z.string() });
export const messageSchema = z.object({
  /** "developer" is OpenAI's newer name for "system" */
  role: z.enum(['system', 'developer', 'user', 'assistant']),
  content: z.union([z.string(), z.array(textPart)], {
    errorMap: () => ({ message: 'content must be a string or a list of {"type": "text", "text": ...} parts' }),
  }),
  name: z.string().optional(),
});
// The schema yields exactly the message type the prompt code takes (src/model/chat-prompt.ts).
messageSchema satisfies z.ZodType<ChatMessage>;

export const chatSchema = z.object({
  ...generationFields,
  messages: z.array(messageSchema).min(1, 'messages must hold at least one message'),
  logprobs: z.boolean().nullish(),
  /** alternatives per token, 0..20; needs logprobs: true */
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  /** OpenAI's newer name for max_tokens in chat */
  max_completion_tokens: z.number().int().min(1).nullish(),
  /** extension: continue a chat session (src/worker/http/routes/sessions.ts); also the x-session-id header */
  session_id: z.string().nullish(),
});
export type ChatRequest = z.infer<typeof chatSchema>;

/** OpenAI fields with the value that means "off"; any other value is refused with unsupported_parameter. */
const UNSUPPORTED: Record<string, (v: unknown) => boolean> = {
  echo: (v) => v === false,
  best_of: (v) => v === 1,
  suffix: (v) => v === '',
  logit_bias: (v) => typeof v === 'object' && v !== null && Object.keys(v).length === 0,
  tools: (v) => Array.isArray(v) && v.length === 0,
  functions: (v) => Array.isArray(v) && v.length === 0,
  tool_choice: (v) => v === 'none',
  function_call: (v) => v === 'none',
  // only means something with tools, which must be empty
  parallel_tool_calls: (v) => typeof v === 'boolean',
  store: (v) => v === false,
  metadata: (v) => typeof v === 'object' && v !== null && Object.keys(v).length === 0,
  modalities: (v) => Array.isArray(v) && v.length === 1 && v[0] === 'text',
  response_format: (v) => typeof v === 'object' && v !== null && (v as { type?: unknown }).type === 'text',
};

/**
 * Chat's logprobs options as the number of alternatives per token, or null when off. top_logprobs
 * without logprobs: true is refused, as OpenAI does (0 is accepted: it asks for nothing).
 */
export function chatTopLogprobs(o: { logprobs?: boolean | null; top_logprobs?: number | null }): number | null {
  if (o.logprobs === true) return o.top_logprobs ?? 0;
  if (o.top_logprobs)
    throw new ApiError(
      400,
      "Invalid value for 'top_logprobs': logprobs must be set to true when top_logprobs is used.",
      'invalid_value',
      'top_logprobs',
    );
  return null;
}

/** The completions' legacy logprobs (an integer 0..5) as alternatives per token, or null when off. */
export function completionTopLogprobs(o: { logprobs?: number | false | null }): number | null {
  return typeof o.logprobs === 'number' ? o.logprobs : null;
}

/** `messages[0].content` style names, as OpenAI reports them in `param`. */
function paramName(path: ReadonlyArray<string | number>): string | null {
  if (path.length === 0) return null;
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? p : `.${p}`)).join('');
}

/** The value at a zod issue's path in the body, undefined when any step of the path is missing. */
function valueAt(body: unknown, path: ReadonlyArray<string | number>): unknown {
  let v = body;
  for (const k of path) {
    if (typeof v !== 'object' || v === null) return undefined;
    v = (v as Record<string | number, unknown>)[k];
  }
  return v;
}

function issueToError(issue: z.ZodIssue, body: unknown): ApiError {
  const param = paramName(issue.path);
  const where = param ? `'${param}'` : 'the request body';
  // A union (prompt, content, stop) reports a missing value as a value none of its members took.
  const missing =
    (issue.code === 'invalid_type' && issue.received === 'undefined') ||
    (issue.path.length > 0 && valueAt(body, issue.path) === undefined);
  if (missing) {
    return new ApiError(400, `Missing required parameter: ${where}.`, 'missing_required_parameter', param);
  }
  if (issue.code === 'invalid_type') {
    return new ApiError(
      400,
      `Invalid type for ${where}: expected ${issue.expected}, but got ${issue.received}.`,
      'invalid_type',
      param,
    );
  }
  if (issue.code === 'unrecognized_keys' && issue.path.length === 0) {
    const list = issue.keys.join(', ');
    return new ApiError(
      400,
      `Unrecognized request argument supplied: ${list}. This server does not know ${issue.keys.length > 1 ? 'these parameters' : 'this parameter'}; remove ${issue.keys.length > 1 ? 'them' : 'it'} or check the spelling.`,
      'unknown_parameter',
      issue.keys[0],
    );
  }
  if (issue.code === 'unrecognized_keys') {
    return new ApiError(
      400,
      `Unrecognized ${issue.keys.length > 1 ? 'fields' : 'field'} in ${where}: ${issue.keys.join(', ')}.`,
      'unknown_parameter',
      param,
    );
  }
  return new ApiError(400, `Invalid value for ${where}: ${issue.message}.`, 'invalid_value', param);
}

/**
 * Validates a parsed JSON body; the first problem becomes a 400 naming the parameter at fault. An
 * object schema is applied strictly (unknown top-level fields refused), after the UNSUPPORTED
 * fields, checked to be off, are set aside.
 */
export function validate<T extends z.ZodTypeAny>(schema: T, body: unknown): z.infer<T> {
  let rest = body;
  if (typeof body === 'object' && body !== null && !Array.isArray(body)) {
    const copy = { ...(body as Record<string, unknown>) };
    for (const [key, isOff] of Object.entries(UNSUPPORTED)) {
      const v = copy[key];
      if (v !== undefined && v !== null && !isOff(v)) {
        throw new ApiError(
          400,
          `'${key}' is not supported by this server; leave it unset.`,
          'unsupported_parameter',
          key,
        );
      }
      delete copy[key];
    }
    rest = copy;
  }
  const r = (schema instanceof z.ZodObject ? schema.strict() : schema).safeParse(rest);
  if (!r.success) throw issueToError(r.error.issues[0], body);
  return r.data;
}

/** Reads the body as JSON; anything unparseable is a 400 before any schema runs. */
export async function readJson(req: Request): Promise<unknown> {
  const text = await req.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(
      400,
      'We could not parse the JSON body of your request. The body must be a JSON object, sent with Content-Type: application/json.',
      'invalid_json',
    );
  }
}

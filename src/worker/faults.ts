import { EngineError } from '../engine/errors.js';
import { ModelFormatError } from '../model/errors.js';
import { RuntimeError } from '../runtime/onnx-runtime.js';
import { ConfigError } from './config.js';

/**
 * Failures as plain data, without HTTP: what the Durable Object returns over RPC and what the HTTP
 * edge (errors.ts `toApiError`, routes/sessions.ts) turns into a response. An exception becomes a
 * `Failure` here once, and a `Failure` becomes an ApiError once, at the edge.
 */

/** OpenAI's error body: every non-2xx response of the HTTP API has exactly this shape. */
export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export type Failure = { ok: false; status: number; error: ErrorBody['error'] };

/** What every Durable Object RPC method answers: nothing but a broken object throws across the boundary. */
export type Result<T> = ({ ok: true } & T) | Failure;

/** A client mistake found while planning a request (job.ts); the edge answers it with `status`. */
export class RequestError extends Error {
  override name = 'RequestError';
  constructor(
    message: string,
    readonly code: string | null,
    readonly param: string | null = null,
    readonly status = 400,
  ) {
    super(message);
  }
}

/**
 * A Failure raised as an exception below the HTTP layer: what a Durable Object answered (a group's
 * refusal travels up the chain as is), or a refusal of the server's load (`server_busy`). The edge
 * answers it with its status and `headers` (Retry-After).
 */
export class Refusal extends Error {
  override name = 'Refusal';
  constructor(
    readonly failure: Failure,
    readonly headers: Record<string, string> = {},
  ) {
    super(failure.error.message);
  }
}

/**
 * The client hung up (a stream's reader cancelled, a request aborted): a normal event, not a fault.
 * Generation stops on it; nobody is left to read an answer, and nothing is logged.
 */
export class ClientGone extends Error {
  override name = 'ClientGone';
}

export const failureOf = (
  status: number,
  message: string,
  code: string | null,
  param: string | null = null,
  type?: string,
): Failure => ({
  ok: false,
  status,
  error: { message, type: type ?? (status >= 500 ? 'server_error' : 'invalid_request_error'), param, code },
});

/** Engine codes that mean "the request asked for something impossible"; every other code is our fault. */
const ENGINE_CLIENT_CODES = new Set([
  'invalid_request',
  'invalid_sampler',
  'invalid_schedule',
  'context_length_exceeded',
]);

export const INTERNAL = 'The server had an error while processing your request.';

/**
 * Maps any thrown value that is not an HTTP error to a Failure. Client mistakes keep their message
 * (it says what to fix); server faults get a fixed message, and the caller logs the original.
 */
export function describeError(e: unknown): Failure {
  if (e instanceof Refusal) return e.failure;
  // The operator's mistake, named so that /healthz and every request say what to fix.
  if (e instanceof ConfigError) return failureOf(503, e.message, 'server_misconfigured', null, 'server_error');
  if (e instanceof RequestError) return failureOf(e.status, e.message, e.code, e.param);
  if (e instanceof ClientGone) return failureOf(499, 'The client closed the request.', 'client_gone');
  if (e instanceof EngineError)
    return ENGINE_CLIENT_CODES.has(e.code)
      ? failureOf(400, e.message, e.code, e.param)
      : failureOf(500, INTERNAL, 'engine_error');
  if (e instanceof ModelFormatError)
    return failureOf(
      500,
      'The model could not be loaded; the server log says which file is wrong.',
      'model_unavailable',
    );
  if (e instanceof RuntimeError) return failureOf(500, INTERNAL, 'runtime_error');
  return failureOf(500, INTERNAL, 'internal_error');
}

/**
 * 5xx answers that are the server's load, not its fault: every layer-group chain serving another
 * request (`server_busy`, groups/chain.ts), a group isolate without room for another state
 * (`isolate_full`, groups/isolate-room.ts). Expected whenever requests outnumber GROUP_CHAINS, so
 * they are counted in the log as such (one line, no stack), where an operator sizing the pool
 * looks, and kept out of the error log, where a real fault must not drown among them.
 */
const LOAD_ANSWERS = new Set(['server_busy', 'isolate_full']);

/** When a load answer is worth retrying: a busy chain frees within a request, a full isolate when a request or session ends. */
export function retryHeaders(f: Failure): Record<string, string> {
  const code = f.error.code ?? '';
  return code === 'server_busy' ? { 'Retry-After': '1' } : code === 'isolate_full' ? { 'Retry-After': '10' } : {};
}

/** Server faults go to the log with their stack (never to the client); client mistakes are not logged; load answers are noted as such. */
export function logFault(err: { status: number; code: string | null }, cause: unknown, where: string): void {
  if (err.code !== null && LOAD_ANSWERS.has(err.code))
    console.info(
      `lazy-edge: ${where} answered ${err.status} ${err.code} (load, not a fault): ${cause instanceof Error ? cause.message : String(cause)}`,
    );
  else if (err.status >= 500)
    console.error(
      `lazy-edge: ${where} failed (${err.code}):`,
      cause instanceof Error ? (cause.stack ?? cause.message) : cause,
    );
}

/** `describeError`, with a server fault logged (the RPC side of the Durable Object uses this). */
export function failureFrom(e: unknown, where: string): Failure {
  const f = describeError(e);
  logFault({ status: f.status, code: f.error.code }, e, where);
  return f;
}

import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { EngineError } from '../engine/errors.js';
import { ModelFormatError } from '../model/errors.js';
import { RuntimeError } from '../runtime/onnx-runtime.js';

/** OpenAI's error body: every non-2xx response of the HTTP API has exactly this shape. */
export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/**
 * Longest error message sent, in characters. Messages quote the offending input (a schedule, a
 * model name, unknown keys) so the client sees what to fix; the quote must not turn a 240 KB
 * request into a 240 KB answer.
 */
export const MAX_MESSAGE_CHARS = 1024;

function clip(message: string): string {
  return message.length <= MAX_MESSAGE_CHARS ? message : `${message.slice(0, MAX_MESSAGE_CHARS - 1)}…`;
}

/**
 * The one error type of the HTTP layer. Handlers and middleware throw it; the app's single
 * `onError` turns it (and anything else, via `toApiError`) into an OpenAI-shaped response.
 */
export class ApiError extends HTTPException {
  override name = 'ApiError';
  constructor(
    status: ContentfulStatusCode,
    message: string,
    readonly code: string | null,
    readonly param: string | null = null,
    readonly type: string = status >= 500 ? 'server_error' : 'invalid_request_error',
    readonly headers: Record<string, string> = {},
  ) {
    super(status, { message: clip(message) });
  }

  body(): ErrorBody {
    const param = this.param === null ? null : clip(this.param);
    return { error: { message: this.message, type: this.type, param, code: this.code } };
  }

  override getResponse(): Response {
    return Response.json(this.body(), { status: this.status, headers: this.headers });
  }
}

/**
 * The client hung up (a stream's reader cancelled, a request aborted): a normal event, not a fault.
 * Generation stops on it; nobody is left to read an answer, and nothing is logged.
 */
export class ClientGone extends Error {
  override name = 'ClientGone';
}

export const invalid = (message: string, param: string | null, code: string | null = 'invalid_value') => new ApiError(400, message, code, param);

/** Engine codes that mean "the request asked for something impossible"; every other code is our fault. */
const ENGINE_CLIENT_CODES = new Set(['invalid_request', 'invalid_sampler', 'invalid_schedule', 'context_length_exceeded']);

const INTERNAL = 'The server had an error while processing your request.';

/**
 * Maps any thrown value to an ApiError. Client mistakes keep their message (it says what to fix);
 * server faults get a fixed message, and the caller logs the original with its stack.
 */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof ClientGone) return new ApiError(499 as ContentfulStatusCode, 'The client closed the request.', 'client_gone');
  if (e instanceof EngineError) {
    return ENGINE_CLIENT_CODES.has(e.code) ? new ApiError(400, e.message, e.code, e.param) : new ApiError(500, INTERNAL, 'engine_error');
  }
  if (e instanceof ModelFormatError) return new ApiError(500, 'The model could not be loaded; the server log says which file is wrong.', 'model_unavailable');
  if (e instanceof RuntimeError) return new ApiError(500, INTERNAL, 'runtime_error');
  if (e instanceof HTTPException) {
    return e.status >= 500 ? new ApiError(e.status, INTERNAL, 'internal_error') : new ApiError(e.status, e.message || `HTTP ${e.status}`, null);
  }
  return new ApiError(500, INTERNAL, 'internal_error');
}

/** Server faults go to the log with their stack (never to the client); client mistakes are not logged. */
export function logFault(err: ApiError, cause: unknown, where: string): void {
  if (err.status >= 500) console.error(`lazy-edge: ${where} failed (${err.code}):`, cause instanceof Error ? (cause.stack ?? cause.message) : cause);
}

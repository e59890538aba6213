import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { ClientGone, describeError, INTERNAL, logFault, Refusal, type ErrorBody, type Failure } from '../faults.js';

export { ClientGone, logFault, type ErrorBody };

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

export const invalid = (message: string, param: string | null, code: string | null = 'invalid_value') =>
  new ApiError(400, message, code, param);

/** A Failure (faults.ts) as the HTTP layer's error: the one place where a failure takes its HTTP form. */
export function fromFailure(f: Failure, headers: Record<string, string> = {}): ApiError {
  return new ApiError(
    f.status as ContentfulStatusCode,
    f.error.message,
    f.error.code,
    f.error.param,
    f.error.type,
    headers,
  );
}

/**
 * Maps any thrown value to an ApiError. Client mistakes keep their message (it says what to fix);
 * server faults get a fixed message, and the caller logs the original with its stack.
 */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof Refusal) return fromFailure(e.failure, e.headers);
  if (e instanceof HTTPException) {
    return e.status >= 500
      ? new ApiError(e.status, INTERNAL, 'internal_error')
      : new ApiError(e.status, e.message || `HTTP ${e.status}`, null);
  }
  return fromFailure(describeError(e));
}

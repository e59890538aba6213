import type { MiddlewareHandler } from 'hono';
import type { AppEnv } from './app-env.js';
import { ApiError } from './errors.js';

/** application/json or any application/*+json, parameters (charset) allowed. */
const JSON_TYPE = /^application\/([\w.+-]+\+)?json\s*(;|$)/i;

/**
 * A request body must be declared JSON (415 otherwise). Every body of this API is JSON; what this
 * refuses is the "simple" cross-origin POST a browser sends without a preflight (text/plain,
 * form encodings), with which any web page could spend an open server's CPU. A request without a
 * body (POST /v1/sessions may have none) needs no type. The refused body is cancelled unread.
 */
export function requireJsonBody(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const req = c.req.raw;
    // Only POST routes take bodies; other methods go on to their 404/405.
    if (req.method !== 'POST' || !req.body || req.headers.get('content-length') === '0') return next();
    const type = req.headers.get('content-type') ?? '';
    if (!JSON_TYPE.test(type.trim())) {
      await req.body.cancel().catch(() => undefined);
      const shown =
        type === ''
          ? 'no Content-Type'
          : `Content-Type ${JSON.stringify(type.slice(0, 64))}${type.length > 64 ? '…' : ''}`;
      throw new ApiError(
        415,
        `The request body must be JSON, sent with Content-Type: application/json (got ${shown}).`,
        'unsupported_media_type',
        null,
        'invalid_request_error',
        { Accept: 'application/json' },
      );
    }
    return next();
  };
}

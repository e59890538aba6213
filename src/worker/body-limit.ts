import type { MiddlewareHandler } from 'hono';
import type { AppEnv } from './app-env.js';
import { ApiError } from './errors.js';

/**
 * Refuses request bodies over `maxSize` bytes with 413. hono's bodyLimit does the counting too, but
 * on a chunked body it stops reading at the limit and leaves the stream locked and half read: the
 * rest of the upload stays in the connection, and under wrangler the next request on the server
 * hung or got 503 (issue #14, item 3). Here the reader is cancelled before the 413 goes out, which
 * tells the runtime the body is unwanted; a declared Content-Length over the limit is refused
 * before anything is read, its stream cancelled as well.
 */
export function bodyLimit(maxSize: number): MiddlewareHandler<AppEnv> {
  const tooLarge = () => new ApiError(413, `The request body is larger than ${maxSize} bytes.`, 'request_too_large');
  return async (c, next) => {
    const body = c.req.raw.body;
    if (!body) return next();
    const declared = c.req.raw.headers.has('transfer-encoding') ? null : c.req.raw.headers.get('content-length');
    if (declared !== null) {
      if (Number(declared) > maxSize) {
        await body.cancel().catch(() => undefined);
        throw tooLarge();
      }
      return next();
    }
    const reader = body.getReader();
    const parts: Uint8Array[] = [];
    let size = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > maxSize) {
        await reader.cancel().catch(() => undefined);
        throw tooLarge();
      }
      parts.push(value);
    }
    const buf = new Uint8Array(size);
    let at = 0;
    for (const p of parts) {
      buf.set(p, at);
      at += p.byteLength;
    }
    c.req.raw = new Request(c.req.raw, { body: buf });
    return next();
  };
}

import type { MiddlewareHandler } from 'hono';
import type { AppEnv } from './app-env.js';
import { ApiError } from './errors.js';

/**
 * Most bytes of an oversized body read and dropped before its 413 goes out; past it the body is
 * cancelled. Why read it at all: in the local runtime (workerd under wrangler), a Worker that
 * stops reading a request body before its end, cancelled or not, breaks the server's next request,
 * from any client on any connection: it hangs until a timeout or gets "Your worker restarted
 * mid-request" (issue 26; scripts/probes/runtime-worker shows it with a ten-line Worker). Reading
 * to the end never did. 16 MiB is far beyond any real request to this API and a few ms of reading.
 */
export const DRAIN_CAP_BYTES = 16 * 1024 * 1024;

/** Reads and drops the rest of a body, up to DRAIN_CAP_BYTES; a client that hangs up meanwhile ends it too. */
async function drain(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<void> {
  let n = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      n += value.byteLength;
      if (n > DRAIN_CAP_BYTES) break;
    }
  } catch {
    return; // the upload broke off: nothing is left to read
  }
  await reader.cancel().catch(() => undefined);
}

/**
 * Refuses request bodies over `maxSize` bytes with 413, read to their end first (DRAIN_CAP_BYTES
 * says why). hono's bodyLimit counts too, but stops reading at the limit and leaves the stream
 * locked and half read (issue 14, item 3). A declared Content-Length over the limit is refused
 * without keeping anything; a chunked body is kept up to the limit and handed on in one piece.
 */
export function bodyLimit(maxSize: number): MiddlewareHandler<AppEnv> {
  const tooLarge = () => new ApiError(413, `The request body is larger than ${maxSize} bytes.`, 'request_too_large');
  return async (c, next) => {
    const body = c.req.raw.body;
    if (!body) return next();
    const declared = c.req.raw.headers.has('transfer-encoding') ? null : c.req.raw.headers.get('content-length');
    if (declared !== null) {
      if (Number(declared) > maxSize) {
        await drain(body.getReader());
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
        await drain(reader);
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

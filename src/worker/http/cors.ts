import type { MiddlewareHandler } from 'hono';
import type { AppEnv } from './app-env.js';
import { configOf } from '../config.js';

/**
 * CORS for API use from other origins, off unless CORS_ORIGINS lists origins. Only an explicit
 * list: a wildcard would hand every web page a visitor opens the visitor's access to this server
 * (an open server, or keys pasted into a page), which is a choice to make origin by origin.
 *
 * Hono's own `cors()` answers every OPTIONS request with 204, allowed origin or not; here a
 * preflight from an origin not on the list falls through to the router (405, no CORS headers), so
 * what the browser sees matches what the server allows. No credentials mode: keys travel in the
 * Authorization header, never in cookies.
 */

const ALLOW_METHODS = 'GET, POST, DELETE, OPTIONS';
const ALLOW_HEADERS = 'Authorization, Content-Type, X-Session-Id, Idempotency-Key';
/** response headers a cross-origin script may read (timing of non-streamed replies, 409's retry hint) */
const EXPOSE_HEADERS = 'Server-Timing, Retry-After';
const PREFLIGHT_MAX_AGE_S = '600';

export function cors(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const origin = c.req.header('origin');
    const origins = configOf(c.env).corsOrigins;
    const allowed = origin !== undefined && origins.has(origin.toLowerCase());
    if (!allowed) {
      await next();
      // The answer depends on Origin even when it carries no CORS headers: without Vary, a cache
      // could hand this header-less answer to an allowed origin, or the reverse.
      if (origins.size > 0) c.res.headers.append('Vary', 'Origin');
      return;
    }
    if (c.req.method === 'OPTIONS' && c.req.header('access-control-request-method')) {
      return new Response(null, {
        status: 204,
        headers: {
          'Access-Control-Allow-Origin': origin,
          'Access-Control-Allow-Methods': ALLOW_METHODS,
          'Access-Control-Allow-Headers': ALLOW_HEADERS,
          'Access-Control-Max-Age': PREFLIGHT_MAX_AGE_S,
          Vary: 'Origin',
        },
      });
    }
    await next();
    // After next(): errors have become responses by now (onError runs inside), so 4xx/5xx bodies are readable too.
    c.res.headers.set('Access-Control-Allow-Origin', origin);
    c.res.headers.set('Access-Control-Expose-Headers', EXPOSE_HEADERS);
    c.res.headers.append('Vary', 'Origin');
  };
}

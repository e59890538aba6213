import type { Context, MiddlewareHandler } from 'hono';
import { sha256Hex } from '../../model/manifest.js';
import type { AppEnv } from './app-env.js';
import { ApiError } from './errors.js';
import { configOf, parseApiKeys } from '../config.js';

/** Identity of callers when the server is open (API_KEYS unset). */
export const ANONYMOUS = 'anonymous';

/** Who is calling: the key id set by `requireApiKey`, or "anonymous" on an open server. */
export function apiKeyId(c: Context<AppEnv>): string {
  return c.get('apiKeyId') ?? ANONYMOUS;
}

let openNoticeLogged = false;
/** For tests: lets the next request on an open server log the notice again. */
export function resetOpenNotice(): void {
  openNoticeLogged = false;
}

// Digests of the configured keys, per API_KEYS value (one entry in practice).
const digests = new Map<string, Promise<Set<string>>>();

async function knownDigests(secret: string): Promise<Set<string>> {
  let d = digests.get(secret);
  if (!d) {
    d = Promise.all(parseApiKeys(secret).map((k) => sha256Hex(new TextEncoder().encode(k)))).then((h) => new Set(h));
    digests.set(secret, d);
  }
  return d;
}

const unauthorized = (message: string, code: string) =>
  new ApiError(401, message, code, null, 'invalid_request_error', { 'WWW-Authenticate': 'Bearer realm="lazy-edge"' });

/**
 * When the secret API_KEYS holds keys, requires `Authorization: Bearer <one of them>` and sets
 * `apiKeyId`. When it is unset or blank, lets everyone in as "anonymous" and says so once per
 * isolate in the log. Keys are compared by sha256 digest, so the comparison time says nothing
 * about how much of a key matched.
 */
export function requireApiKey(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const secret = c.env.API_KEYS;
    if (configOf(c.env).apiKeys.length === 0) {
      if (!openNoticeLogged) {
        openNoticeLogged = true;
        console.warn(
          'lazy-edge: API_KEYS is not set, so /v1/* is open to anyone (set it with `wrangler secret put API_KEYS`)',
        );
      }
      c.set('apiKeyId', ANONYMOUS);
      return next();
    }
    const header = c.req.header('Authorization');
    if (!header)
      throw unauthorized(
        'You did not provide an API key. Send it as "Authorization: Bearer YOUR_KEY".',
        'missing_api_key',
      );
    const m = /^Bearer\s+(.+)$/i.exec(header.trim());
    if (!m) throw unauthorized('The Authorization header must be "Bearer YOUR_KEY".', 'invalid_api_key');
    const key = m[1].trim();
    const digest = await sha256Hex(new TextEncoder().encode(key));
    if (!(await knownDigests(secret!)).has(digest))
      throw unauthorized('Incorrect API key provided.', 'invalid_api_key');
    // A stable, non-secret name for the key, safe to log and to namespace sessions with.
    c.set('apiKeyId', `key-${digest.slice(0, 16)}`);
    return next();
  };
}

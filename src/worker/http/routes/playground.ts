import { Hono, type Context } from 'hono';
import type { AppEnv } from '../app-env.js';
import page from '../../../playground/index.html';

/**
 * GET / and GET /playground: the playground page (src/playground/index.html). It is bundled into
 * the Worker as a text module rather than placed among the static assets, because the assets
 * directory is model-shards/, kept private by run_worker_first: serving the page from there would
 * mean forwarding asset requests, the one thing the Worker must never do with the shards.
 *
 * The page's one inline script is allowed by its hash in the Content-Security-Policy, so nothing
 * else can run even if some text ever reached the page as markup; it may only talk to this origin.
 */

const SCRIPT = /<script>([\s\S]*?)<\/script>/;

let csp: Promise<string> | undefined;

async function contentSecurityPolicy(): Promise<string> {
  const script = SCRIPT.exec(page)?.[1] ?? '';
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(script)));
  const hash = btoa(String.fromCharCode(...digest));
  return [
    "default-src 'none'",
    `script-src 'sha256-${hash}'`,
    "style-src 'unsafe-inline'",
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
}

const servePage = async (c: Context<AppEnv>) =>
  c.html(page, 200, {
    'Content-Security-Policy': await (csp ??= contentSecurityPolicy()),
    'X-Content-Type-Options': 'nosniff',
    // Small and changes with every deploy: revalidate rather than serve a stale page against a newer API.
    'Cache-Control': 'no-cache',
  });

export const playground = new Hono<AppEnv>().get('/', (c) => servePage(c)).get('/playground', (c) => servePage(c));

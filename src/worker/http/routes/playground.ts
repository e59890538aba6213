import { Hono, type Context } from 'hono';
import type { AppEnv } from '../app-env.js';
import { ApiError } from '../errors.js';
import page from '../../../playground/index.html';
import {
  parseRuntimeList,
  PLAYGROUND_ASSETS_DIR,
  RUNTIME_LIST,
  servedFiles,
} from '../../../playground/runtime-files.js';

/**
 * GET / and GET /playground: the playground page (src/playground/index.html). It is bundled into
 * the Worker as a text module rather than placed among the static assets, because the assets
 * directory is model-shards/, kept private by run_worker_first: serving the page from there would
 * mean forwarding asset requests, the one thing the Worker must never do with the shards.
 *
 * The page's one inline script is allowed by its hash in the Content-Security-Policy, so nothing
 * else can run even if some text ever reached the page as markup; it may only talk to this origin.
 * Its "run in this browser" imports the engine bundle from this origin ('self') and compiles
 * onnxruntime's binary ('wasm-unsafe-eval', WebAssembly only; no eval of JavaScript).
 *
 * GET /playground/runtime.json and /playground/files/{file}: that bundle and the binary's parts,
 * from the assets' `_playground/` folder (src/playground/runtime-files.ts), only the files its list
 * names. No API key: they are this page's code, not the model.
 */

const SCRIPT = /<script>([\s\S]*?)<\/script>/;

let csp: Promise<string> | undefined;

async function contentSecurityPolicy(): Promise<string> {
  const script = SCRIPT.exec(page)?.[1] ?? '';
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(script)));
  const hash = btoa(String.fromCharCode(...digest));
  return [
    "default-src 'none'",
    `script-src 'self' 'wasm-unsafe-eval' 'sha256-${hash}'`,
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

const notBuilt = () =>
  new ApiError(
    503,
    `this Worker's assets hold no ${PLAYGROUND_ASSETS_DIR}/${RUNTIME_LIST}: the in-browser runtime was not built (npm run setup builds it)`,
    'playground_runtime_missing',
  );

async function runtimeListText(assets: Fetcher): Promise<string> {
  const res = await assets.fetch(`https://assets.local/${PLAYGROUND_ASSETS_DIR}/${RUNTIME_LIST}`);
  if (!res.ok) throw notBuilt();
  return res.text();
}

export const playground = new Hono<AppEnv>()
  .get('/', (c) => servePage(c))
  .get('/playground', (c) => servePage(c))
  .get(`/playground/${RUNTIME_LIST}`, async (c) =>
    c.body(await runtimeListText(c.env.ASSETS), 200, {
      'Content-Type': 'application/json',
      'Cache-Control': 'no-cache',
      'X-Content-Type-Options': 'nosniff',
    }),
  )
  .get('/playground/files/:file', async (c) => {
    const file = c.req.param('file');
    const entry = servedFiles(parseRuntimeList(await runtimeListText(c.env.ASSETS))).find((f) => f.file === file);
    if (!entry) throw new ApiError(404, `no playground file ${file}`, 'unknown_playground_file');
    const res = await c.env.ASSETS.fetch(`https://assets.local/${PLAYGROUND_ASSETS_DIR}/${file}`);
    if (!res.ok || !res.body) throw notBuilt();
    return c.body(res.body, 200, {
      'Content-Type': file.endsWith('.js') ? 'text/javascript' : 'application/octet-stream',
      'Content-Length': String(entry.bytes),
      // the name carries the content's hash: the same URL never means other bytes
      'Cache-Control': 'public, max-age=31536000, immutable',
      ETag: `"${entry.sha256}"`,
      'X-Content-Type-Options': 'nosniff',
    });
  });

import { Hono } from 'hono';
import { methodNotAllowed } from 'hono/method-not-allowed';
import type { AppEnv } from './app-env.js';
import { requireApiKey } from './auth.js';
import { bodyLimit } from './body-limit.js';
import { cors } from './cors.js';
import { requireJsonBody } from './content-type.js';
import { ApiError, logFault, toApiError } from './errors.js';
import { healthResponse, unavailable } from './health.js';
import { chat } from './routes/chat.js';
import { completions } from './routes/completions.js';
import { modelFiles } from './routes/model-files.js';
import { models } from './routes/models.js';
import { playground } from './routes/playground.js';
import { sessions } from './routes/sessions.js';

/** Largest request body accepted (413 above). A full 512-token context is a few KiB of text. */
export const MAX_BODY_BYTES = 256 * 1024;

/**
 * The HTTP API: OpenAI-compatible routes under /v1 (behind the API key when API_KEYS is set) and
 * an open /healthz. Every failure, whatever raised it, leaves through `onError` as an OpenAI-shaped
 * error body; the engine below knows nothing of HTTP.
 */
export function createApp(): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  // First: a preflight needs no key or body, and every answer (errors included) needs the CORS headers.
  app.use('*', cors());
  app.use(
    '*',
    methodNotAllowed({
      app,
      onMethodNotAllowed: (c, methods) =>
        new ApiError(
          405,
          `Method ${c.req.method} is not allowed on ${c.req.path}; use ${methods.join(' or ')}.`,
          'method_not_allowed',
          null,
          'invalid_request_error',
          {
            Allow: methods.join(', '),
          },
        ).getResponse(),
    }),
  );
  app.use('/v1/*', requireJsonBody());
  app.use('*', bodyLimit(MAX_BODY_BYTES));
  app.use('/v1/*', requireApiKey());

  app.route('/v1/completions', completions);
  app.route('/v1/chat/completions', chat);
  app.route('/v1/models', models);
  app.route('/v1/model-files', modelFiles);
  app.route('/v1/sessions', sessions);
  app.route('/', playground);
  app.get('/healthz', (c) => healthResponse(c.env));

  app.notFound((c) => new ApiError(404, `Invalid URL (${c.req.method} ${c.req.path}).`, 'unknown_url').getResponse());
  app.onError((e, c) => {
    // /healthz says why it cannot serve, whatever failed before its handler (a variable read by middleware).
    if (c.req.path === '/healthz') return unavailable(e);
    const err = toApiError(e);
    logFault(err, e, `${c.req.method} ${c.req.path}`);
    return err.getResponse();
  });
  return app;
}

export const app = createApp();

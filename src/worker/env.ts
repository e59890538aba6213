/**
 * Bindings and variables the Worker receives. Those wrangler.toml declares (ASSETS, CHAT_SESSIONS,
 * the [vars]) are generated into worker-configuration.d.ts by `npm run types` (`wrangler types`),
 * documented in wrangler.toml; rerun it after changing wrangler.toml. Those it does not set
 * (secrets, local-only settings) are added here, once, for the Worker and the tests alike.
 */
declare global {
  namespace Cloudflare {
    interface Env {
      /** comma-separated bearer tokens (`wrangler secret put API_KEYS`); unset = open server */
      API_KEYS?: string;
      /** origins (comma-separated, e.g. https://app.example.com) allowed to call the API from a browser; unset = no CORS (src/worker/http/cors.ts) */
      CORS_ORIGINS?: string;
      /** local development only: pace shard reads to this many MB/s (src/worker/model-store.ts says why) */
      ASSET_READ_MB_PER_S?: string;
    }
  }
}

/**
 * The Worker's env. The [vars] are typed as wrangler.toml sets them, but the code still reads each
 * as possibly unset (a deployment may drop one) and falls back to its default: MEMORY_BUDGET_MB
 * (MiB or "off", 128), CONTEXT_TOKENS (2048), KV_FORMAT (f32), REQUEST_BUDGET_MS (60000), SESSION_TTL_SECONDS (86400).
 */
export type Env = Cloudflare.Env;

/** A var holding milliseconds (>= 0); unset or blank gives `fallback`, anything else is a deployment mistake. */
export function millisecondsVar(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw.trim() === '') return fallback;
  const ms = Number(raw);
  if (!Number.isFinite(ms) || ms < 0) throw new Error(`${name} must be a number of milliseconds >= 0, got "${raw}"`);
  return ms;
}

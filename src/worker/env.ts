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

/** The Worker's env: its bindings, and the variables config.ts reads and checks once. */
export type Env = Cloudflare.Env;

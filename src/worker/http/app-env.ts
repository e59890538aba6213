import type { Env } from '../env.js';

/** Hono's typing of this app: the Worker's bindings, and what middleware leaves for handlers. */
export interface AppEnv {
  Bindings: Env;
  Variables: {
    /** the caller's key id ("key-" + sha256 prefix) or "anonymous"; see auth.ts */
    apiKeyId: string;
  };
}

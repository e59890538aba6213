/** Bindings and variables the Worker receives (wrangler.toml). */
export interface Env {
  ASSETS: Fetcher;
  MODEL_NAME: string;
  /**
   * The isolate memory budget the model must fit, in MiB, or "off" (default 128: what a deployed
   * Worker has). Raise it only for local use: a deployed isolate is killed past 128 MB whatever this says.
   */
  MEMORY_BUDGET_MB?: string;
  /** the context window served, in tokens (default 2048; at most the model's trained context) */
  CONTEXT_TOKENS?: string;
  /** local development only: pace shard reads to this many MB/s (src/worker/model-store.ts says why) */
  ASSET_READ_MB_PER_S?: string;
  /** per-request generation time budget in ms; a generation that reaches it ends with finish_reason "length" */
  REQUEST_BUDGET_MS?: string;
  /** comma-separated bearer tokens; unset = open server */
  API_KEYS?: string;
  /** origins (comma-separated, e.g. https://app.example.com) allowed to call the API from a browser; unset = no CORS (src/worker/cors.ts) */
  CORS_ORIGINS?: string;
  /** chat sessions (src/worker/chat-session.ts), one Durable Object per API key and session id */
  CHAT_SESSIONS: DurableObjectNamespace<import('./chat-session.js').ChatSession>;
  /** seconds a session may stay idle before its alarm deletes it (default 86400) */
  SESSION_TTL_SECONDS?: string;
}

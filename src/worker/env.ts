/** Bindings and variables the Worker receives (wrangler.toml). */
export interface Env {
  ASSETS: Fetcher;
  MODEL_NAME: string;
  /** per-request generation time budget in ms; a generation that reaches it ends with finish_reason "length" */
  REQUEST_BUDGET_MS?: string;
  /** comma-separated bearer tokens; unset = open server */
  API_KEYS?: string;
  /** chat sessions (src/worker/chat-session.ts), one Durable Object per API key and session id */
  CHAT_SESSIONS: DurableObjectNamespace<import('./chat-session.js').ChatSession>;
  /** seconds a session may stay idle before its alarm deletes it (default 86400) */
  SESSION_TTL_SECONDS?: string;
}

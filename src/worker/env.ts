/** Bindings and variables the Worker receives (wrangler.toml). */
export interface Env {
  ASSETS: Fetcher;
  MODEL_NAME: string;
  /** per-request generation time budget in ms; a generation that reaches it ends with finish_reason "length" */
  REQUEST_BUDGET_MS?: string;
  /** comma-separated bearer tokens; unset = open server */
  API_KEYS?: string;
}

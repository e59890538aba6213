declare namespace Cloudflare {
  interface Env {
    ASSETS: Fetcher;
    MODEL_NAME: string;
    REQUEST_BUDGET_MS?: string;
    API_KEYS?: string;
  }
  interface GlobalProps {
    mainModule: typeof import('../src/worker/index');
  }
}

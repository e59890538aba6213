declare namespace Cloudflare {
  interface Env {
    ASSETS: Fetcher;
    MODEL_NAME: string;
    REQUEST_BUDGET_MS?: string;
    API_KEYS?: string;
    CHAT_SESSIONS: DurableObjectNamespace<import('../src/worker/chat-session').ChatSession>;
    SESSION_TTL_SECONDS?: string;
    MEMORY_BUDGET_MB?: string;
    CONTEXT_TOKENS?: string;
    ASSET_READ_MB_PER_S?: string;
    CORS_ORIGINS?: string;
  }
  interface GlobalProps {
    mainModule: typeof import('../src/worker/index');
  }
}

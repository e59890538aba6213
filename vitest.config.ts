import { cloudflareTest } from '@cloudflare/vitest-pool-workers';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    globalSetup: ['test/support/global-setup.ts'],
    projects: [
      {
        test: {
          name: 'node',
          include: ['test/node/**/*.test.ts'],
          environment: 'node',
          testTimeout: 300_000,
          hookTimeout: 300_000,
        },
      },
      {
        // Most Worker tests run the small stories260K; its outputs are what they pin. They pin fresh
        // computations, so the prefix cache is off (test/workers/prefix-cache.test.ts turns it on).
        plugins: [
          cloudflareTest({
            wrangler: { configPath: './wrangler.toml' },
            miniflare: { bindings: { MODEL_NAME: 'stories260K', PREFIX_CACHE_MB: '0' } },
          }),
        ],
        test: {
          name: 'workers',
          include: ['test/workers/**/*.test.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
        },
      },
      {
        // The served default, SmolLM2, as wrangler.toml configures it, with the budget npm start sets
        // (and no prefix cache: these tests pin fresh computations).
        plugins: [
          cloudflareTest({
            wrangler: { configPath: './wrangler.toml' },
            miniflare: { bindings: { MEMORY_BUDGET_MB: '1024', PREFIX_CACHE_MB: '0' } },
          }),
        ],
        test: {
          name: 'workers-smollm2',
          include: ['test/workers-smollm2/**/*.test.ts'],
          testTimeout: 600_000,
          hookTimeout: 600_000,
        },
      },
    ],
  },
});

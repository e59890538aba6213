import { defineConfig } from 'vitest/config';

/**
 * The engine in headless Chromium on WebGPU (SwiftShader on a machine without a GPU): `npm run
 * test:webgpu`. Not part of `npm test`: SwiftShader runs SmolLM2 tens of times slower than wasm, and
 * the file takes several minutes on two cores.
 */
export default defineConfig({
  test: {
    name: 'browser',
    include: ['test/browser/**/*.test.ts'],
    environment: 'node',
    testTimeout: 900_000,
    hookTimeout: 300_000,
  },
});

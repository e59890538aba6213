/**
 * Bundles the engine for a web page (src/browser/engine.ts and a page's entry) with esbuild, into an
 * ignored directory. The one difference from Node and the Worker: `onnxruntime-web/wasm` becomes
 * `onnxruntime-web/webgpu` (the same API, built with the WebGPU EP), so src/runtime/onnx-runtime.ts
 * stays the only module importing onnxruntime; that build's binary, ort-wasm-simd-threaded.asyncify.wasm,
 * is copied next to the bundle.
 */
import { copyFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { build } from 'esbuild';
import { REPO_ROOT } from './node-env.js';

/** The WebGPU build's binary, as the bundle's directory holds it. */
export const BROWSER_WASM = 'ort-wasm-simd-threaded.asyncify.wasm';

export const BROWSER_BUNDLE_DIR = join(REPO_ROOT, '.browser-bundle');

/** Bundles each entry (path relative to the repo) as `<outDir>/<name>.js`, an ES module; copies the binary. */
export async function bundleForBrowser(entries: Record<string, string>, outDir = BROWSER_BUNDLE_DIR): Promise<string> {
  mkdirSync(outDir, { recursive: true });
  await build({
    entryPoints: Object.fromEntries(Object.entries(entries).map(([name, path]) => [name, join(REPO_ROOT, path)])),
    outdir: outDir,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    minify: true,
    sourcemap: false,
    logLevel: 'warning',
    // esbuild resolves it for the browser's ESM import: ort.webgpu.bundle.min.mjs, its loader inlined
    alias: { 'onnxruntime-web/wasm': 'onnxruntime-web/webgpu' },
  });
  const wasm = createRequire(import.meta.url).resolve(`onnxruntime-web/${BROWSER_WASM}`);
  copyFileSync(wasm, join(outDir, BROWSER_WASM));
  return outDir;
}

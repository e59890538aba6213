/** Node-side plumbing shared by the scripts: where things live, reading shards, starting the runtime. */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_MEMORY_BUDGET_BYTES, MB } from '../../src/engine/memory-budget.js';
import { EngineError } from '../../src/engine/errors.js';
import { isKvFormat, KV_FORMATS, type KvFormat } from '../../src/engine/kv-rows.js';
import { loadModel, type LoadedModel, type LoadOptions } from '../../src/engine/model.js';
import { ModelFormatError } from '../../src/model/errors.js';
import { initRuntime } from '../../src/runtime/onnx-runtime.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** The shared model folder stays outside the repo; LAZY_EDGE_MODEL_DIR points elsewhere. */
export const DEFAULT_MODEL_DIR = process.env.LAZY_EDGE_MODEL_DIR ?? resolve(REPO_ROOT, '../shared/models/stories260K');
export const DEFAULT_DATA = process.env.LAZY_EDGE_DATA ?? resolve(REPO_ROOT, '../shared/data/tinystories-dev.txt');
export const SHARDS_ROOT = resolve(REPO_ROOT, 'model-shards');
export const DEFAULT_MODEL_NAME = 'stories260K';

export function readBytes(path: string): Uint8Array {
  const buf = readFileSync(path);
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

let runtimeReady = false;
/** Starts onnxruntime-web from the wasm file in node_modules (the same binary the Worker bundles). */
export function initNodeRuntime(): void {
  if (runtimeReady) return;
  const require = createRequire(import.meta.url);
  const wasm = require.resolve('onnxruntime-web/ort-wasm-simd-threaded.wasm');
  initRuntime({ binary: readBytes(wasm) });
  runtimeReady = true;
}

export function shardsDir(name: string): string {
  return join(SHARDS_ROOT, name);
}

/**
 * The isolate memory budget loadModel enforces: LAZY_EDGE_MEMORY_BUDGET_MB (a number of MiB, or
 * "off"), else 128 MB as in a Worker. Speed work on big random shapes sets it explicitly.
 */
export function memoryBudgetFromEnv(env: Record<string, string | undefined> = process.env): number {
  const v = env.LAZY_EDGE_MEMORY_BUDGET_MB?.trim();
  if (v === undefined || v === '') return DEFAULT_MEMORY_BUDGET_BYTES;
  if (v === 'off') return Infinity;
  const n = Number(v);
  if (!(n > 0)) throw new Error(`LAZY_EDGE_MEMORY_BUDGET_MB="${v}" must be a positive number of MiB or "off"`);
  return n * MB;
}

/** LAZY_EDGE_CONTEXT_TOKENS: the context window scripts serve (default 2048, as the Worker's CONTEXT_TOKENS). */
export function contextTokensFromEnv(env: Record<string, string | undefined> = process.env): number | undefined {
  const v = env.LAZY_EDGE_CONTEXT_TOKENS?.trim();
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 2)
    throw new Error(`LAZY_EDGE_CONTEXT_TOKENS="${v}" must be an integer of at least 2`);
  return n;
}

/** LAZY_EDGE_KV_FORMAT: how scripts' KV caches hold rows (f32, f16 or int8; default f32, as the Worker's KV_FORMAT). */
export function kvFormatFromEnv(env: Record<string, string | undefined> = process.env): KvFormat | undefined {
  const v = env.LAZY_EDGE_KV_FORMAT?.trim();
  if (v === undefined || v === '') return undefined;
  if (!isKvFormat(v)) throw new Error(`LAZY_EDGE_KV_FORMAT="${v}" must be one of ${KV_FORMATS.join(', ')}`);
  return v as KvFormat;
}

export async function loadModelFromDir(dir: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  const manifestPath = join(dir, 'manifest.json');
  if (!existsSync(manifestPath)) {
    throw new ModelFormatError(
      manifestPath,
      'a shard manifest (build the shards with: npm run shards)',
      'no such file',
    );
  }
  initNodeRuntime();
  return loadModel(readFileSync(manifestPath, 'utf8'), async (file) => readBytes(join(dir, file)), {
    memoryBudgetBytes: memoryBudgetFromEnv(),
    contextTokens: contextTokensFromEnv(),
    kvFormat: kvFormatFromEnv(),
    ...opts,
  });
}

/** Exits with a clear message instead of a stack trace: scripts are used by people and other tools. */
export function fail(message: string): never {
  process.stderr.write(`error: ${message}\n`);
  process.exit(2);
}

/**
 * Runs a script's main and turns what it throws into an exit: the user's mistakes (bad options, bad
 * files, refused requests) as their message alone, anything else with its stack, since that is a bug.
 */
export function runMain(main: () => Promise<void>): void {
  main().catch((e: unknown) => {
    const err = e instanceof Error ? e : new Error(String(e));
    const usersMistake =
      err instanceof ModelFormatError ||
      err instanceof EngineError ||
      String((err as { code?: unknown }).code ?? '').startsWith('ERR_PARSE_ARGS');
    fail(usersMistake ? err.message : (err.stack ?? err.message));
  });
}

export function progress(message: string): void {
  process.stderr.write(`${message}\n`);
}

/** A TCP port on 127.0.0.1 that was free a moment ago, for a dev server a script or test starts. */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

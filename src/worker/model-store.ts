import wasmModule from 'onnxruntime-web/ort-wasm-simd-threaded.wasm';
import { MB, type MemoryEstimate } from '../engine/memory-budget.js';
import { loadModel, type LoadedModel } from '../engine/model.js';
import { ModelFormatError } from '../model/errors.js';
import { initRuntime, wasmHeapBytes } from '../runtime/onnx-runtime.js';
import { configOf } from './config.js';
import type { Env } from './env.js';

initRuntime({ module: wasmModule });

// One load per isolate, shared by concurrent first requests; a failed load is retried next time.
const loads = new Map<string, Promise<LoadedModel>>();

/**
 * Reads one static asset. `mbPerSecond` (ASSET_READ_MB_PER_S, local development only) paces the
 * reads: wrangler's local asset service holds a loopback socket per ~4 KB read for about six
 * seconds, so reading a 145 MB model at full speed runs workerd out of file descriptors.
 */
export function assetReader(assets: Fetcher, mbPerSecond: number | undefined) {
  let readyAt = 0;
  return async (path: string): Promise<Uint8Array> => {
    const wait = readyAt - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const res = await assets.fetch(`https://assets.local/${path}`);
    if (!res.ok)
      throw new ModelFormatError(path, 'a model shard in the static assets', `HTTP ${res.status} (run npm run shards)`);
    const bytes = new Uint8Array(await res.arrayBuffer());
    if (mbPerSecond) readyAt = Math.max(readyAt, Date.now()) + (bytes.byteLength / (mbPerSecond * MB)) * 1000;
    return bytes;
  };
}

/** What a deployed Worker isolate has, whatever MEMORY_BUDGET_MB says (DESIGN.md). */
export const DEPLOYED_ISOLATE_MB = 128;

/** What loading needs: the assets and the variables (config.ts). */
export type ModelEnv = Pick<Env, 'ASSETS'> & Partial<Env>;

/** The configured model's shards, read from the static assets and verified against the manifest's sha256. */
export function getModel(env: ModelEnv): Promise<LoadedModel> {
  const { modelName: name, load, assetReadMbPerS } = configOf(env);
  // Keyed by the options too: a model served at another context or KV format is another load.
  const key = `${name} ${JSON.stringify(load)}`;
  let p = loads.get(key);
  if (!p) {
    p = (async () => {
      const read = assetReader(env.ASSETS, assetReadMbPerS);
      const manifest = new TextDecoder().decode(await read(`${name}/manifest.json`));
      return loadModel(manifest, (file) => read(`${name}/${file}`), load);
    })();
    p.catch(() => loads.delete(key));
    loads.set(key, p);
  }
  return p;
}

export const mib = (b: number) => Math.round((b / MB) * 10) / 10;

/** An estimate's parts (src/engine/memory-budget.ts) in MiB, as /healthz reports them. */
export function estimateMb(e: MemoryEstimate) {
  return {
    weights: mib(e.weights),
    weight_copies: mib(e.weightCopies),
    kv_cache: mib(e.kvCache),
    aux_cache: mib(e.auxCache),
    activations: mib(e.activations),
    tokenizer: mib(e.tokenizer),
    runtime: mib(e.runtime),
    total: mib(e.total),
  };
}

/**
 * The JavaScript heap where the runtime exposes it: Node's process.memoryUsage (V8 heap + array buffers,
 * which exclude the wasm memory), a browser's performance.memory; null in workerd, which exposes none.
 */
function jsHeapBytes(): { bytes: number; how: string } | null {
  const proc = (globalThis as { process?: { memoryUsage?: () => { heapUsed: number; arrayBuffers: number } } }).process;
  if (typeof proc?.memoryUsage === 'function') {
    const m = proc.memoryUsage();
    if (m.heapUsed > 0)
      return { bytes: m.heapUsed + m.arrayBuffers, how: 'process.memoryUsage() heapUsed + arrayBuffers' };
  }
  const perf = (globalThis as { performance?: { memory?: { usedJSHeapSize?: number } } }).performance;
  if (perf?.memory?.usedJSHeapSize)
    return { bytes: perf.memory.usedJSHeapSize, how: 'performance.memory.usedJSHeapSize' };
  return null;
}

/**
 * What /healthz says about memory: the budget, the estimate it was checked with (each of its parts:
 * src/engine/memory-budget.ts, whose constants `npm run memory` measured), and what is measured now:
 * the wasm memory (it only grows: a high-water mark) and the JS heap where the runtime exposes it (not
 * in workerd). Fitting a deployed isolate takes both the estimate and the measurement to be under it:
 * the estimate covers the caches at full context, the measurement what the runtime really took.
 */
export function memoryReport(model: Pick<LoadedModel, 'memory' | 'memoryBudgetBytes' | 'config'>) {
  const e = model.memory;
  const heap = wasmHeapBytes();
  const js = jsHeapBytes();
  return {
    budget_mb: Number.isFinite(model.memoryBudgetBytes) ? mib(model.memoryBudgetBytes) : null,
    deployed_isolate_mb: DEPLOYED_ISOLATE_MB,
    fits_deployed_isolate: Math.max(e.total, (heap ?? 0) + (js?.bytes ?? 0)) <= DEPLOYED_ISOLATE_MB * MB,
    context_tokens: model.config.seqLen,
    kv_format: model.config.kvFormat ?? 'f32',
    estimate_mb: estimateMb(e),
    measured_wasm_heap_mb: heap === null ? null : mib(heap),
    measured_js_heap_mb: js === null ? null : mib(js.bytes),
    measured_in: `wasm: onnxruntime's WebAssembly.Memory size; JS heap: ${js ? js.how : 'not exposed by this runtime (workerd)'}`,
  };
}

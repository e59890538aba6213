import type { KvFormat } from '../../src/engine/kv-rows.js';
import type { MemoryEstimate } from '../../src/engine/memory-budget.js';

/** The estimate's parts as the report prints them (bytes). */
export function estimateJson(e: MemoryEstimate): MemoryReport['estimate_bytes'] {
  return {
    weights: e.weights,
    kv_cache: e.kvCache,
    aux_cache: e.auxCache,
    runtime: e.runtime,
    activations: e.activations,
    tokenizer: e.tokenizer,
    total: e.total,
  };
}

/** What `npm run memory` prints (scripts/memory/memory.ts): bytes an isolate holds for a model at a context. */
export interface MemoryReport {
  runtime: 'node' | 'workerd';
  model: string;
  context: number;
  kv_format: KvFormat;
  quant: string;
  /** the most the isolate held while loading (wasm + JS) */
  load_peak_bytes: number;
  /** what it holds with the model loaded and N tokens cached, settled */
  steady_bytes: number;
  wasm_bytes: number;
  js_heap_bytes: number;
  /** the most it held while filling the cache */
  fill_peak_bytes: number;
  /** wasm memory right after loading, before any token */
  wasm_after_load_bytes: number;
  /** the KV cache's rows at the capacity it reserved, and the Aux Cache (empty after a dense fill) */
  kv_cache_bytes: number;
  estimate_bytes: {
    weights: number;
    kv_cache: number;
    aux_cache: number;
    runtime: number;
    activations: number;
    tokenizer: number;
    total: number;
  };
  deployed_isolate_bytes: number;
  fits_deployed_isolate: boolean;
  measured_in: string;
  [extra: string]: unknown;
}

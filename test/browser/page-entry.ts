/**
 * The test page's script (bundled by scripts/lib/browser-bundle.ts): loads a model on a provider and
 * runs one greedy generation, dense or lazy, returning what the test compares across providers.
 */
import { generateRecorded, loadInBrowser, wasmHeapBytes, type LoadProgress } from '../../src/browser/engine.js';
import { parseSchedule } from '../../src/engine/policy.js';
import type { LoadedModel } from '../../src/engine/model.js';
import type { ProviderSetting } from '../../src/runtime/onnx-runtime.js';

export interface PageCase {
  modelUrl: string;
  wasmUrl: string;
  provider: ProviderSetting;
  prompt: number[];
  maxTokens: number;
  /** schedules to run, "dense" for none */
  schedules: string[];
}

const loaded = new Map<string, LoadedModel>();

async function runCase(c: PageCase) {
  const key = `${c.modelUrl} ${c.provider}`;
  const t0 = performance.now();
  let model = loaded.get(key);
  if (!model)
    loaded.set(key, (model = await loadInBrowser({ modelUrl: c.modelUrl, wasm: c.wasmUrl, provider: c.provider })));
  const loadMs = performance.now() - t0;
  const runs = [];
  for (const s of c.schedules) {
    const { result, steps } = await generateRecorded(model, c.prompt, {
      maxTokens: c.maxTokens,
      sampler: { temperature: 0, topP: 1, topK: 0, seed: 1 },
      schedule: s === 'dense' ? null : parseSchedule(s),
      logprobs: { top: 5 },
    });
    runs.push({
      schedule: s,
      tokens: result.tokens,
      logprobs: result.logprobs,
      steps,
      prefillMs: result.stats.prefill_ms,
      decodeMs: result.stats.decode_ms,
    });
  }
  // what the page holds after the runs: onnxruntime's wasm heap (one per page, shared by both providers'
  // sessions) and Chromium's JS heap; WebGPU buffers are not visible to the page
  const jsHeap = (performance as { memory?: { usedJSHeapSize: number } }).memory?.usedJSHeapSize ?? null;
  return {
    provider: model.runtime.provider,
    reason: model.runtime.reason,
    loadMs,
    runs,
    wasmHeap: wasmHeapBytes(),
    jsHeap,
  };
}

/** Loads without running: the progress reports seen, or the error that stopped the load. */
async function loadOnly(c: Pick<PageCase, 'modelUrl' | 'wasmUrl' | 'provider'>) {
  const progress: LoadProgress[] = [];
  try {
    await loadInBrowser({
      modelUrl: c.modelUrl,
      wasm: c.wasmUrl,
      provider: c.provider,
      onProgress: (p) => progress.push(p),
    });
    return { progress, error: null };
  } catch (e) {
    return { progress, error: `${(e as Error).name}: ${(e as Error).message}` };
  }
}

Object.assign(globalThis, { runCase, loadOnly });

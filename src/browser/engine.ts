/**
 * The engine in a web page: the same loader, engine, LazyLLM policy and caches as the Worker's,
 * reading a model's shards over HTTP with progress, on WebGPU or wasm. Bundled for the browser by
 * scripts/lib/browser-bundle.ts (which maps the runtime to onnxruntime-web's WebGPU build);
 * used by the playground's "run in this browser" and by test/browser/.
 */
import { SequenceState } from '../engine/caches.js';
import { generate, type GenerateOptions, type GenerateResult } from '../engine/generate.js';
import { estimateMemory } from '../engine/memory-budget.js';
import { DEFAULT_CONTEXT_TOKENS, loadModel, type LoadedModel } from '../engine/model.js';
import type { LayerTrace } from '../engine/step.js';
import { parseManifest, quantOf, type Manifest } from '../model/manifest.js';
import { initRuntime, wasmHeapBytes, type ProviderSetting } from '../runtime/onnx-runtime.js';

export class BrowserLoadError extends Error {
  override name = 'BrowserLoadError';
}

/**
 * The browser could not give the memory a model needs (wasm's heap could not grow, a GPU buffer
 * could not be allocated): says which model, its download from the manifest's sizes and what the
 * engine estimates it holds, so the page can say so and offer the server path.
 */
export class BrowserMemoryError extends Error {
  override name = 'BrowserMemoryError';
  constructor(
    readonly model: string,
    readonly fileBytes: number,
    readonly estimatedBytes: number,
    readonly cause: string,
  ) {
    const mb = (b: number) => `${(b / 1e6).toFixed(1)} MB`;
    super(
      `This browser could not give ${model} the memory it needs: its files are ${mb(fileBytes)} (the manifest's sizes) ` +
        `and loaded it holds about ${mb(estimatedBytes)} (the engine's estimate). onnxruntime said: ${cause}`,
    );
  }
}

/**
 * How onnxruntime and the browser report an allocation that failed: V8's WebAssembly.Memory and
 * ArrayBuffer errors, onnxruntime's own (bad_alloc, "Failed to allocate"), and WebGPU's out-of-memory.
 */
const MEMORY_FAILURE =
  /could not allocate memory|out of memory|\bOOM\b|Memory\.grow|bad_alloc|allocation failed|failed to allocate/i;

/** Bytes of a load so far: what the progress bar shows. */
export interface LoadProgress {
  file: string;
  loadedBytes: number;
  totalBytes: number;
}

export interface BrowserLoadOptions {
  /**
   * URL ending in "/" under which `manifest.json` and each file as `<sha256>/<file>` are served: the
   * Worker's GET /v1/model-files/ (src/worker/http/routes/model-files.ts)
   */
  modelUrl: string;
  /** sent with every request (the API key, when the server has one) */
  headers?: Record<string, string>;
  /**
   * onnxruntime-web's WebGPU-build binary (ort-wasm-simd-threaded.asyncify.wasm): its URL, or a
   * function giving its bytes (the playground fetches it in parts and checks it, src/playground/in-browser.ts)
   */
  wasm: string | (() => Promise<Uint8Array>);
  provider: ProviderSetting;
  /** context window served in the page (default 2048): the KV cache grows up to it */
  contextTokens?: number;
  onProgress?: (p: LoadProgress) => void;
}

async function fetchBytes(url: string, headers: Record<string, string> = {}): Promise<Uint8Array> {
  const res = await fetch(url, { headers });
  if (!res.ok) throw new BrowserLoadError(`${url}: HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

/** Every byte the page downloads for a model: its files as the manifest lists them. */
export function modelBytes(m: Manifest): number {
  const f = m.files;
  return m.tokenizer.bytes + [...f.embed, ...f.layers, ...f.head].reduce((n, e) => n + e.bytes, 0);
}

let runtimeStarted: Promise<void> | null = null;

function startRuntime(wasm: BrowserLoadOptions['wasm']): Promise<void> {
  runtimeStarted ??= (typeof wasm === 'string' ? fetchBytes(wasm) : wasm()).then((binary) =>
    initRuntime({ binary }, { webgpu: true }),
  );
  // a failed download may be retried by the next load
  runtimeStarted.catch(() => (runtimeStarted = null));
  return runtimeStarted;
}

/**
 * Loads the model at `modelUrl`: every file checked against the manifest's sha256 (loadModel's
 * verification) and its weights against the format, before onnxruntime sees it. No memory budget:
 * a page is not a 128 MB isolate (docs/WEBGPU.md says what it holds).
 */
export async function loadInBrowser(opts: BrowserLoadOptions): Promise<LoadedModel> {
  await startRuntime(opts.wasm);
  const manifestText = new TextDecoder().decode(await fetchBytes(`${opts.modelUrl}manifest.json`, opts.headers));
  const manifest = parseManifest(manifestText);
  const f = manifest.files;
  const hashes = new Map([manifest.tokenizer, ...f.embed, ...f.layers, ...f.head].map((e) => [e.file, e.sha256]));
  const totalBytes = modelBytes(manifest);
  let loadedBytes = 0;
  try {
    return await loadModel(
      manifestText,
      async (file) => {
        const bytes = await fetchBytes(`${opts.modelUrl}${hashes.get(file)}/${file}`, opts.headers);
        loadedBytes += bytes.byteLength;
        opts.onProgress?.({ file, loadedBytes, totalBytes });
        return bytes;
      },
      { provider: opts.provider, memoryBudgetBytes: Infinity, contextTokens: opts.contextTokens },
    );
  } catch (e) {
    const message = (e as Error)?.message ?? String(e);
    if (!MEMORY_FAILURE.test(message)) throw e;
    const config = {
      ...manifest.config,
      seqLen: Math.min(manifest.config.seqLen, opts.contextTokens ?? DEFAULT_CONTEXT_TOKENS),
    };
    const held = estimateMemory(
      config,
      quantOf(manifest),
      f.head.map((p) => p.rows),
    ).total;
    throw new BrowserMemoryError(manifest.name, totalBytes, held, message);
  }
}

/** What each layer computed at every step: steps[s][l] = the positions layer l ran (step 0 = the prefill). */
export type StepQueries = number[][][];

/** One generation on a fresh sequence, with every step's per-layer work recorded. */
export async function generateRecorded(
  model: LoadedModel,
  prompt: readonly number[],
  opts: Omit<GenerateOptions, 'trace'> & { trace?: LayerTrace },
): Promise<{ result: GenerateResult; steps: StepQueries }> {
  const steps: StepQueries = [];
  const record: LayerTrace = (layer, queries, revived) => {
    if (layer === 0) steps.push([]);
    steps[steps.length - 1][layer] = Array.from(queries);
    opts.trace?.(layer, queries, revived);
  };
  const seq = new SequenceState(model.config);
  const result = await generate(model, seq, prompt, { ...opts, trace: record });
  return { result, steps };
}

export { wasmHeapBytes };

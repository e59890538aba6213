/**
 * The playground's "run in this browser" (bundled by scripts/lib/playground-assets.ts, loaded by
 * src/playground/index.html with a dynamic import): downloads onnxruntime's binary in its parts and
 * the served model from the Worker's GET /v1/model-files, then answers a chat request exactly as the
 * server's stateless path does: the same validation (schemas.ts), the same plan (job/chat-job.ts:
 * chat template, defaults, LazyLLM schedule) and the same run (job/run.ts: engine, trace, stats),
 * on a fresh state in this page. Only the request budget differs: it guards the Worker's CPU limit,
 * and a page spends its user's own time, so the job has no deadline here.
 */
import { loadInBrowser, type LoadProgress } from '../browser/engine.js';
import { SequenceState } from '../engine/caches.js';
import type { LoadedModel } from '../engine/model.js';
import { sha256Hex } from '../model/manifest.js';
import type { ProviderSetting } from '../runtime/onnx-runtime.js';
import { planChatJob } from '../worker/job/chat-job.js';
import { yieldToEventLoop } from '../worker/job/plan.js';
import { runJob, type Outcome } from '../worker/job/run.js';
import { chatSchema, chatTopLogprobs, validate } from '../worker/http/schemas.js';
import { parseRuntimeList, RUNTIME_LIST, type RuntimeList } from './runtime-files.js';

export type { LoadProgress, Outcome };

/** Where the Worker serves this page's runtime (src/worker/http/routes/playground.ts). */
const RUNTIME_BASE = '/playground/';

async function get(url: string, headers?: Record<string, string>): Promise<Uint8Array> {
  const res = await fetch(url, { headers });
  if (!res.ok) {
    let why = `${res.status} ${res.statusText}`;
    try {
      const e = (await res.json()) as { error?: { message?: string } };
      if (e.error?.message) why = e.error.message;
    } catch {
      // not the API's error body
    }
    throw new Error(`${url}: ${why}`);
  }
  return new Uint8Array(await res.arrayBuffer());
}

export async function runtimeList(): Promise<RuntimeList> {
  return parseRuntimeList(new TextDecoder().decode(await get(`${RUNTIME_BASE}${RUNTIME_LIST}`)));
}

/**
 * onnxruntime's binary from its parts (each under the per-asset limit), checked part by part and
 * whole against the list's sha256 before onnxruntime sees it.
 */
export async function fetchRuntimeBinary(
  list: RuntimeList,
  onProgress?: (loaded: number) => void,
): Promise<Uint8Array> {
  const whole = new Uint8Array(list.wasm.bytes);
  let at = 0;
  for (const p of list.wasm.parts) {
    const bytes = await get(`${RUNTIME_BASE}files/${p.file}`);
    const hash = await sha256Hex(bytes);
    if (bytes.byteLength !== p.bytes || hash !== p.sha256)
      throw new Error(
        `${p.file}: expected ${p.bytes} bytes with sha256 ${p.sha256}, got ${bytes.byteLength} (${hash})`,
      );
    whole.set(bytes, at);
    at += bytes.byteLength;
    onProgress?.(at);
  }
  const hash = await sha256Hex(whole);
  if (hash !== list.wasm.sha256) throw new Error(`${list.wasm.file}: expected sha256 ${list.wasm.sha256}, got ${hash}`);
  return whole;
}

export interface PageLoadOptions {
  provider: ProviderSetting;
  /** the API key's header, when the server has one: /v1/model-files is behind it */
  headers?: Record<string, string>;
  /** onnxruntime's binary: bytes so far of `total` */
  onRuntimeProgress?: (loaded: number, total: number) => void;
  /** the model's files */
  onProgress?: (p: LoadProgress) => void;
  /** the context the server serves (GET /v1/models' context_length), so that defaults agree */
  contextTokens?: number;
}

/** Loads the served model in this page; a memory failure is a BrowserMemoryError (src/browser/engine.ts). */
export async function load(o: PageLoadOptions): Promise<LoadedModel> {
  return loadInBrowser({
    modelUrl: '/v1/model-files/',
    headers: o.headers,
    provider: o.provider,
    wasm: async () => {
      const list = await runtimeList();
      return fetchRuntimeBinary(list, (n) => o.onRuntimeProgress?.(n, list.wasm.bytes));
    },
    onProgress: o.onProgress,
    contextTokens: o.contextTokens,
  });
}

/**
 * One chat request (the body the page would POST to /v1/chat/completions) run in this page; `onText`
 * receives each piece of the reply as the engine releases it. The outcome's stats are the server's
 * `lazy_stats` (with `trace` when the body asks for it).
 */
export async function chat(model: LoadedModel, body: unknown, onText: (text: string) => void): Promise<Outcome> {
  const startedAt = performance.now();
  const request = validate(chatSchema, body);
  // the served model's name is the only setting planning reads here (the budget's default is then replaced)
  const env = { MODEL_NAME: model.manifest.name };
  const job = { ...planChatJob(env, startedAt, model, request, chatTopLogprobs(request)), deadline: Infinity };
  const { outcome } = await runJob(
    job,
    { seq: new SequenceState(model.config) },
    {
      // the page redraws between tokens
      beforeStep: yieldToEventLoop,
      onText: async (t) => onText(t),
    },
  );
  return outcome;
}

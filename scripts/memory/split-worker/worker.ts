/**
 * One object of a split model inside workerd, for `scripts/memory/split-memory.ts --runtime workerd`:
 * POST /load {"model", "context", "kv", "part"} loads that part as its Durable Object would
 * (loadModelPart over the static assets, src/worker/groups/parts.ts) and answers the wasm memory;
 * POST /fill {"stepTokens"} then fills it at the context (scripts/memory/split-fill.ts) and answers the wasm memory and
 * its KV + Aux bytes; GET /noop answers nothing (the process's baseline). The JS heap is not
 * observable inside workerd: the driver reads the process's resident set from /proc.
 */
import type { SequenceState } from '../../../src/engine/caches.js';
import type { KvFormat } from '../../../src/engine/kv-rows.js';
import { loadModelPart, type ModelPart, type PartSpec } from '../../../src/engine/model.js';
import { wasmHeapBytes } from '../../../src/runtime/onnx-runtime.js';
import { assetReader } from '../../../src/worker/model-store.js';
import { fillPart } from '../split-fill.js';

interface Env {
  ASSETS: Fetcher;
}

/** The one part this process holds, and its state once filled (held, as the object holds it). */
let loaded: ModelPart | null = null;
let state: SequenceState | null = null;

export default {
  async fetch(req: Request, env: Env): Promise<Response> {
    const url = new URL(req.url);
    try {
      if (url.pathname === '/noop') return Response.json({ ok: true });
      if (url.pathname === '/load' && req.method === 'POST') {
        if (loaded) throw new Error('this process already holds a part: one object per process');
        const b = (await req.json()) as { model: string; context: number; kv: KvFormat; part: PartSpec };
        const read = assetReader(env.ASSETS, undefined);
        const manifest = new TextDecoder().decode(await read(`${b.model}/manifest.json`));
        loaded = await loadModelPart(manifest, (f) => read(`${b.model}/${f}`), b.part, {
          contextTokens: b.context,
          kvFormat: b.kv,
          memoryBudgetBytes: Infinity,
        });
        return Response.json({ wasm_bytes: wasmHeapBytes() });
      }
      if (url.pathname === '/fill' && req.method === 'POST') {
        if (!loaded) throw new Error('POST /load first');
        const { stepTokens = 0 } = (await req.json()) as { stepTokens?: number };
        const { seq, kvAuxBytes } = await fillPart(loaded, undefined, stepTokens);
        state = seq;
        return Response.json({ wasm_bytes: wasmHeapBytes(), kv_aux_bytes: kvAuxBytes, tokens: state?.length ?? 0 });
      }
      return new Response('not found', { status: 404 });
    } catch (e) {
      return Response.json({ error: (e as Error).message }, { status: 500 });
    }
  },
} satisfies ExportedHandler<Env>;

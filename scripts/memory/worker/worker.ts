/**
 * GET /load?model=M&context=N&kv=F loads the model as the product Worker does (src/worker/model-store.ts)
 * and answers the wasm memory then. POST /fill {"model", "context", "kv", "text", "upTo"} prefills the text (repeated
 * as needed) into the model's one sequence until it holds `upTo` tokens (default `context`; a fresh sequence when
 * it already holds as many), and answers the wasm memory, the caches' bytes and the embedding table's. Filling in steps keeps each
 * request to minutes (the driver's fetch would time out on one 8k prefill in workerd). GET /noop answers
 * nothing (a baseline for the process's resident set). Memory inside workerd is only observable as
 * the wasm memory; the driver (scripts/memory/workerd.ts) reads the process from /proc.
 */
import { SequenceState } from '../../../src/engine/caches.js';
import { runStep } from '../../../src/engine/step.js';
import { wasmHeapBytes } from '../../../src/runtime/onnx-runtime.js';
import { estimateMemory } from '../../../src/engine/memory-budget.js';
import { getModel } from '../../../src/worker/model-store.js';
import { estimateJson } from '../report.js';
import { streamOfLength } from '../../lib/prompts.js';

interface Env {
  ASSETS: Fetcher;
}

const sequences = new Map<string, SequenceState>();

const modelOf = (env: Env, p: { model: string; context: number; kv: string }) =>
  getModel({
    ...env,
    MODEL_NAME: p.model,
    CONTEXT_TOKENS: String(p.context),
    KV_FORMAT: p.kv,
    MEMORY_BUDGET_MB: 'off',
  });

export default {
  async fetch(req: Request, env: Env): Promise<Response> {
    const url = new URL(req.url);
    try {
      if (url.pathname === '/noop') return Response.json({ ok: true });
      if (url.pathname === '/load') {
        const q = url.searchParams;
        const model = await modelOf(env, {
          model: q.get('model') ?? '',
          context: Number(q.get('context')),
          kv: q.get('kv') ?? 'f32',
        });
        const e = model.memory;
        return Response.json({
          wasm_bytes: wasmHeapBytes(),
          quant: `${model.quant.format}/${model.quant.kernel}`,
          estimate_bytes: estimateJson(e),
        });
      }
      if (url.pathname === '/fill' && req.method === 'POST') {
        const body = (await req.json()) as { model: string; context: number; kv: string; text: string; upTo?: number };
        const model = await modelOf(env, body);
        const upTo = body.upTo ?? body.context;
        const key = JSON.stringify([body.model, body.context, body.kv]);
        let seq = sequences.get(key);
        if (!seq || seq.length >= upTo) sequences.set(key, (seq = new SequenceState(model.config)));
        const tokens = streamOfLength(model.tokenizer, body.text, upTo);
        await runStep(model, seq, tokens.slice(seq.length), { schedule: null });
        return Response.json({
          wasm_bytes: wasmHeapBytes(),
          kv_cache_bytes: seq.kv.bytes + seq.aux.bytes,
          embedding_bytes: model.embed.bytes,
          tokens: seq.length,
          estimate_bytes: estimateJson(
            estimateMemory(
              { ...model.config, seqLen: seq.length },
              model.quant,
              model.manifest.files.head.map((p) => p.rows),
            ),
          ),
        });
      }
      return new Response('not found', { status: 404 });
    } catch (e) {
      return Response.json({ error: (e as Error).message }, { status: 500 });
    }
  },
} satisfies ExportedHandler<Env>;

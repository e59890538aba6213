/**
 * POST /run {"model": "stories260K", "tokens": [...], "schedule": "bos,1:0.5" | null, "decode": 64}
 * prefills the token ids and decodes `decode` greedy tokens, answering the tokens and the step
 * statistics. POST /noop takes the same body and does nothing (request overhead). GET /ready
 * loads the model. Timing happens outside (workerd's clocks only advance on
 * I/O): the benchmark times requests and reads workerd's CPU time from /proc.
 *
 * The SmolLM2 peer rows (scripts/lib/peers/workerd.ts) time prefill and decode as two requests:
 * POST /prefill (the /run body without `decode`) keeps the sequence it prefilled, and POST /decode
 * {"decode": N, "stop": [ids]?} continues that sequence greedily, answering every token from the
 * first. One benchmark drives one sequence at a time, so one held sequence is enough.
 */
import { SequenceState } from '../../src/engine/caches.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { parseSchedule, type Schedule } from '../../src/engine/policy.js';
import { runStep } from '../../src/engine/step.js';
import { getModel } from '../../src/worker/model-store.js';

interface Env {
  ASSETS: Fetcher;
}

interface RunRequest {
  model: string;
  tokens: number[];
  schedule: string | null;
  decode: number;
}

interface Held {
  model: LoadedModel;
  seq: SequenceState;
  schedule: Schedule | null;
  logits: Float32Array;
}
let held: Held | null = null;

function argmax(x: Float32Array): number {
  let b = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[b]) b = i;
  return b;
}

async function prefill(env: Env, body: RunRequest): Promise<Held & { computedPerLayer: number[] }> {
  const model = await getModel({ ...env, MODEL_NAME: body.model, MEMORY_BUDGET_MB: 'off' });
  const schedule = body.schedule ? parseSchedule(body.schedule) : null;
  const seq = new SequenceState(model.config);
  const { logits, stats } = await runStep(model, seq, body.tokens, { schedule });
  return { model, seq, schedule, logits, computedPerLayer: stats.computedPerLayer };
}

/** Greedy tokens from the held logits on; with `stop`, ends after a stop id (included), as bench-child's. */
async function decode(h: Held, n: number, stop?: number[]): Promise<number[]> {
  const tokens: number[] = [];
  for (let i = 0; i < n; i++) {
    tokens.push(argmax(h.logits));
    if (stop?.includes(tokens[i])) break;
    h.logits = (await runStep(h.model, h.seq, [tokens[i]], { schedule: h.schedule })).logits;
  }
  return tokens;
}

export default {
  async fetch(req: Request, env: Env): Promise<Response> {
    const url = new URL(req.url);
    try {
      if (url.pathname === '/ready') {
        const model = await getModel({
          ...env,
          MODEL_NAME: url.searchParams.get('model') ?? 'stories260K',
          MEMORY_BUDGET_MB: 'off',
        });
        return Response.json({ ok: true, layers: model.config.nLayers });
      }
      if (url.pathname === '/noop' && req.method === 'POST') {
        const body = (await req.json()) as RunRequest; // the same request cost as /run, minus the model
        return Response.json({ tokens: [], n: body.tokens.length });
      }
      if (url.pathname === '/run' && req.method === 'POST') {
        const body = (await req.json()) as RunRequest;
        const h = await prefill(env, body);
        return Response.json({ tokens: await decode(h, body.decode), computed_per_layer: h.computedPerLayer });
      }
      if (url.pathname === '/prefill' && req.method === 'POST') {
        held = null;
        held = await prefill(env, (await req.json()) as RunRequest);
        return Response.json({ prompt_tokens: held.seq.length });
      }
      if (url.pathname === '/decode' && req.method === 'POST') {
        const body = (await req.json()) as { decode: number; stop?: number[] };
        if (!held) return Response.json({ error: 'POST /prefill first' }, { status: 409 });
        const h = held;
        held = null;
        return Response.json({ tokens: await decode(h, body.decode, body.stop) });
      }
      return new Response('not found', { status: 404 });
    } catch (e) {
      return Response.json({ error: (e as Error).message }, { status: 500 });
    }
  },
} satisfies ExportedHandler<Env>;

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

export default {
  async fetch(req: Request, env: Env): Promise<Response> {
    const url = new URL(req.url);
    try {
      if (url.pathname === '/ready') {
        const model = await getModel({ ...env, MODEL_NAME: url.searchParams.get('model') ?? 'stories260K', MEMORY_BUDGET_MB: 'off' });
        return Response.json({ ok: true, layers: model.config.nLayers });
      }
      if (url.pathname === '/noop' && req.method === 'POST') {
        const body = (await req.json()) as RunRequest; // the same request cost as /run, minus the model
        return Response.json({ tokens: [], n: body.tokens.length });
      }
      if (url.pathname === '/run' && req.method === 'POST') {
        const body = (await req.json()) as RunRequest;
        const model = await getModel({ ...env, MODEL_NAME: body.model, MEMORY_BUDGET_MB: 'off' });
        const schedule = body.schedule ? parseSchedule(body.schedule) : null;
        const seq = new SequenceState(model.config);
        const first = await runStep(model, seq, body.tokens, { schedule });
        let logits = first.logits;
        const tokens: number[] = [];
        for (let i = 0; i < body.decode; i++) {
          tokens.push(argmax(logits));
          logits = (await runStep(model, seq, [tokens[i]], { schedule })).logits;
        }
        return Response.json({ tokens, computed_per_layer: first.stats.computedPerLayer });
      }
      if (url.pathname === '/prefill' && req.method === 'POST') {
        const body = (await req.json()) as RunRequest;
        const model = await getModel({ ...env, MODEL_NAME: body.model, MEMORY_BUDGET_MB: 'off' });
        const schedule = body.schedule ? parseSchedule(body.schedule) : null;
        const seq = new SequenceState(model.config);
        held = null;
        const { logits } = await runStep(model, seq, body.tokens, { schedule });
        held = { model, seq, schedule, logits };
        return Response.json({ prompt_tokens: seq.length });
      }
      if (url.pathname === '/decode' && req.method === 'POST') {
        const body = (await req.json()) as { decode: number; stop?: number[] };
        if (!held) return Response.json({ error: 'POST /prefill first' }, { status: 409 });
        const { model, seq, schedule } = held;
        const tokens: number[] = [];
        for (let i = 0; i < body.decode; i++) {
          tokens.push(argmax(held.logits));
          if (body.stop?.includes(tokens[i])) break; // a reply ends at its stop id (included), as bench-child's
          held.logits = (await runStep(model, seq, [tokens[i]], { schedule })).logits;
        }
        held = null;
        return Response.json({ tokens });
      }
      return new Response('not found', { status: 404 });
    } catch (e) {
      return Response.json({ error: (e as Error).message }, { status: 500 });
    }
  },
} satisfies ExportedHandler<Env>;

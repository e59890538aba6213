/**
 * POST /run {"model": "stories260K", "tokens": [...], "schedule": "bos,1:0.5" | null, "decode": 64}
 * prefills the token ids and decodes `decode` greedy tokens, answering the tokens and the step
 * statistics. POST /noop takes the same body and does nothing (request overhead). GET /ready
 * loads the model. Timing happens outside (workerd's clocks only advance on
 * I/O): the benchmark times requests and reads workerd's CPU time from /proc.
 *
 * The SmolLM2 peer rows (scripts/bench/peers/workerd.ts) time prefill and decode as two requests:
 * POST /prefill (the /run body without `decode`) keeps the sequence it prefilled, and POST /decode
 * {"decode": N, "stop": [ids]?} continues that sequence greedily, answering every token from the
 * first. One benchmark drives one sequence at a time, so one held sequence is enough.
 */
import { SequenceState } from '../../../src/engine/caches.js';
import { decodeLoop, nextStep, type DecodeLoop, type DecodeStep } from '../../../src/engine/decode-loop.js';
import { parseSchedule } from '../../../src/engine/policy.js';
import { getModel } from '../../../src/worker/model-store.js';
import { benchDecode } from '../decode.js';

interface Env {
  ASSETS: Fetcher;
}

interface RunRequest {
  model: string;
  tokens: number[];
  schedule: string | null;
  decode: number;
}

/** A prefilled greedy loop: `at` is its last step, whose token is the next one out. */
interface Held {
  loop: DecodeLoop;
  at: DecodeStep;
  promptTokens: number;
}
let held: Held | null = null;

async function prefill(env: Env, body: RunRequest): Promise<Held> {
  const model = await getModel({ ...env, MODEL_NAME: body.model, MEMORY_BUDGET_MB: 'off' });
  const schedule = body.schedule ? parseSchedule(body.schedule) : null;
  const loop = decodeLoop(model, new SequenceState(model.config), body.tokens, { schedule });
  return { loop, at: await nextStep(loop), promptTokens: body.tokens.length };
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
        const { tokens } = await benchDecode(h.loop, h.at, body.decode);
        return Response.json({ tokens, computed_per_layer: h.at.stats.computedPerLayer });
      }
      if (url.pathname === '/prefill' && req.method === 'POST') {
        held = null;
        held = await prefill(env, (await req.json()) as RunRequest);
        return Response.json({ prompt_tokens: held.promptTokens });
      }
      if (url.pathname === '/decode' && req.method === 'POST') {
        const body = (await req.json()) as { decode: number; stop?: number[] };
        if (!held) return Response.json({ error: 'POST /prefill first' }, { status: 409 });
        const h = held;
        held = null;
        return Response.json({ tokens: (await benchDecode(h.loop, h.at, body.decode, body.stop)).tokens });
      }
      return new Response('not found', { status: 404 });
    } catch (e) {
      return Response.json({ error: (e as Error).message }, { status: 500 });
    }
  },
} satisfies ExportedHandler<Env>;

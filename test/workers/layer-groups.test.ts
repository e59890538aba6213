import { env } from 'cloudflare:workers';
import { createExecutionContext, runInDurableObject } from 'cloudflare:test';
import OpenAI from 'openai';
import { describe, expect, it, vi } from 'vitest';
import type { LayerGroup } from '../../src/worker/groups/layer-group-object.js';
import { acquirePoolChain, poolChain, poolNames } from '../../src/worker/groups/chain.js';
import { frontModel } from '../../src/worker/groups/parts.js';
import { app } from '../../src/worker/http/app.js';
import { BASE, MODEL, readEvents, withEnv } from '../support/http.js';

/**
 * The layers split across LayerGroup Durable Objects (LAYER_GROUPS > 1) inside workerd: the real
 * Worker, the real objects over RPC. What the split serves must be what the whole model serves.
 */

const PROMPT =
  'Once upon a time, there was a little cat named Tom. Tom liked to play with a red ball in the garden. One day,';

interface Completion {
  status: number;
  body: {
    choices: { text: string; finish_reason: string }[];
    usage: { prompt_tokens: number };
    lazy_stats: {
      computed_per_layer: number[];
      prefill_computed_per_layer: number[];
      aux_entries: number;
      kv_entries: number;
      split?: {
        groups: number;
        prefill_boundary_bytes: number;
        decode_boundary_bytes_per_step: number;
        steps: number;
        prefill_steps: number;
      };
    };
    error?: { code: string };
  };
}

async function complete(vars: Record<string, string>, body: object): Promise<Completion> {
  const res = await withEnv(vars, '/v1/completions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt: PROMPT, ...body }),
  });
  return { status: res.status, body: (await res.json()) as Completion['body'] };
}

const CASES = [
  ['dense, greedy', { max_tokens: 40, temperature: 0, lazy: { enabled: false } }],
  [
    'lazy bos,1:0.5,3:0.5, sampled',
    { max_tokens: 40, temperature: 0.8, seed: 7, lazy: { schedule: 'bos,1:0.5,3:0.5' } },
  ],
  [
    'lazy bos,1:0.4,2:0.5,4:0.5, greedy',
    { max_tokens: 40, temperature: 0, lazy: { schedule: 'bos,1:0.4,2:0.5,4:0.5' } },
  ],
  // A window signal: every group ranks by the rows the frontier names and decodes by the scores it remembered.
  [
    'lazy signal:window:8,heads:max,pool:3,1:0.4,3:0.5, greedy',
    { max_tokens: 40, temperature: 0, lazy: { schedule: 'signal:window:8,heads:max,pool:3,1:0.4,3:0.5' } },
  ],
] as const;

describe('layer groups in workerd (stories260K)', () => {
  it('a split request gets the same pruning trace as the whole model (one runJob for both)', async () => {
    const body = { max_tokens: 12, temperature: 0, lazy: { schedule: 'bos,1:0.5,3:0.5', trace: true } };
    const whole = await complete({}, body);
    const split = await complete({ LAYER_GROUPS: '3' }, body);
    expect(whole.status).toBe(200);
    expect(split.status).toBe(200);
    const trace = (c: Completion) => (c.body.lazy_stats as unknown as { trace: unknown }).trace;
    expect(trace(whole)).toBeDefined();
    expect(trace(split)).toEqual(trace(whole));
  });

  it('objects of one class share one isolate here (so one onnxruntime heap): memory per object is not measurable apart locally', async () => {
    const [a, b] = poolChain(env, 0, 2);
    const [pa, pb] = [await a.probe(), await b.probe()];
    // Recorded as found: workerd runs every object of a namespace in the Worker's isolate.
    expect(pa.isolate).toBe(pb.isolate);
  });

  it("GET /healthz and /v1/models on a split front load only what the front holds (the tokenizer; with EMBED_IN_FRONT the embedding), never a layer or the classifier; /healthz gives every object's estimate", async () => {
    const m = (await frontModel(env)).manifest;
    /** the static assets, recording which of the model's files are read through them */
    const recording = () => {
      const read: string[] = [];
      const assets = {
        fetch: (input: string, init?: RequestInit) => {
          read.push(new URL(input).pathname.slice(`/${MODEL}/`.length));
          return env.ASSETS.fetch(input, init);
        },
      } as unknown as Fetcher;
      return { assets, read };
    };
    const weights = (kind: 'layers' | 'head' | 'embed') => m.files[kind].map((f) => f.file);
    // A context of its own per case makes every load a fresh one (loads are cached per isolate and options).
    for (const [embed, ctx] of [
      ['0', '301'],
      ['1', '302'],
    ] as const) {
      const { assets, read } = recording();
      const vars = { LAYER_GROUPS: '2', HEAD_GROUPS: '1', EMBED_IN_FRONT: embed, CONTEXT_TOKENS: ctx, ASSETS: assets };
      const health = await withEnv(vars, '/healthz');
      expect(health.status).toBe(200);
      const list = await withEnv(vars, '/v1/models');
      expect(list.status).toBe(200);
      expect(((await list.json()) as { data: { id: string; context_length: number }[] }).data).toMatchObject([
        { id: MODEL, context_length: Number(ctx) },
      ]);
      expect(read).toContain(m.tokenizer.file);
      for (const f of [...weights('layers'), ...weights('head')]) expect(read).not.toContain(f);
      for (const f of weights('embed')) expect(read.includes(f)).toBe(embed === '1');
      type Obj = {
        object: string;
        layers: number[] | null;
        embed: boolean;
        head_parts: number[];
        estimate_mb: Record<string, number>;
      };
      const body = (await health.json()) as {
        status: string;
        memory: { context_tokens: number; estimate_mb: Record<string, number> };
        split: {
          layer_groups: number;
          objects: Obj[];
          max_object_estimate_mb: number;
          fits_deployed_isolates: boolean;
        };
      };
      expect(body.status).toBe('ok');
      const objects = body.split.objects;
      // stories260K: 5 layers in 2 groups, its one classifier part in the classifier object
      expect(objects.map(({ estimate_mb: _, ...o }) => o)).toEqual([
        { object: 'layer group 0', layers: [0, 2], embed: embed === '0', head_parts: [] },
        { object: 'layer group 1', layers: [3, 4], embed: false, head_parts: [] },
        { object: 'classifier object 0', layers: null, embed: false, head_parts: [0] },
        { object: 'front', layers: null, embed: embed === '1', head_parts: [] },
      ]);
      // the front's estimate is what it holds (no KV rows, no classifier), and what /healthz reports as this isolate's
      const front = objects[3].estimate_mb;
      expect(front.kv_cache).toBe(0);
      expect(front.tokenizer).toBeGreaterThan(0);
      expect(body.memory.estimate_mb).toEqual(front);
      expect(body.memory.context_tokens).toBe(Number(ctx));
      expect(objects[0].estimate_mb.kv_cache).toBeGreaterThan(objects[1].estimate_mb.kv_cache); // 3 layers' rows against 2
      expect(body.split.max_object_estimate_mb).toBe(Math.max(...objects.map((o) => o.estimate_mb.total)));
      expect(body.split.fits_deployed_isolates).toBe(true);
    }
    // Unsplit, the same check reads every layer: what the split front must not do.
    const whole = recording();
    expect((await withEnv({ LAYER_GROUPS: '1', CONTEXT_TOKENS: '303', ASSETS: whole.assets }, '/healthz')).status).toBe(
      200,
    );
    for (const f of weights('layers')) expect(whole.read).toContain(f);
  });

  for (const G of [2, 3]) {
    for (const [name, body] of CASES) {
      it(`${G} groups, ${name}: the same text and per-layer work as the whole model`, async () => {
        const whole = await complete({ LAYER_GROUPS: '1' }, body);
        const split = await complete({ LAYER_GROUPS: String(G) }, body);
        expect(whole.status).toBe(200);
        expect(split.status).toBe(200);
        expect(whole.body.choices[0].text.length).toBeGreaterThan(20);
        expect(split.body.choices[0]).toEqual(whole.body.choices[0]);
        const { split: s, ...stats } = split.body.lazy_stats;
        for (const k of ['computed_per_layer', 'prefill_computed_per_layer', 'aux_entries', 'kv_entries'] as const)
          expect(stats[k]).toEqual(whole.body.lazy_stats[k]);
        expect(s!.groups).toBe(G);
        // the frontier leaving a group at prefill holds at least the last token's hidden state (64 floats)
        expect(s!.prefill_boundary_bytes).toBeGreaterThan((G - 1) * 64 * 4);
        expect(s!.decode_boundary_bytes_per_step).toBeGreaterThan(0);
      });
    }
  }

  it('a dense decode step sends the same bytes across the groups whatever the context: no list of every token crosses', async () => {
    const dense = { max_tokens: 6, temperature: 0, lazy: { enabled: false } };
    const short = await complete({ LAYER_GROUPS: '3' }, { ...dense, prompt: 'Once upon a time' });
    const long = await complete({ LAYER_GROUPS: '3' }, dense);
    expect(long.body.usage.prompt_tokens).toBeGreaterThan(short.body.usage.prompt_tokens + 20);
    const perStep = (c: Completion) => c.body.lazy_stats.split!.decode_boundary_bytes_per_step;
    expect(perStep(long)).toBe(perStep(short));
    // two boundaries, each one token's hidden state (stories260K: 64 floats) and a few fields
    expect(perStep(long)).toBeLessThan(2 * 2 * 64 * 4);
  });

  for (const [name, body] of CASES) {
    it(`2 layer groups and the classifier in an object of its own, ${name}: the same text as the whole model`, async () => {
      const whole = await complete({ LAYER_GROUPS: '1' }, body);
      const split = await complete({ LAYER_GROUPS: '2', HEAD_GROUPS: '1' }, body);
      const inGroup = await complete({ LAYER_GROUPS: '2' }, body);
      expect(split.status).toBe(200);
      expect(split.body.choices[0]).toEqual(whole.body.choices[0]);
      expect(split.body.lazy_stats.computed_per_layer).toEqual(whole.body.lazy_stats.computed_per_layer);
      // the last layer group sends on only the last token's hidden state (stories260K: 64 floats), not the prompt's
      const more =
        split.body.lazy_stats.split!.prefill_boundary_bytes - inGroup.body.lazy_stats.split!.prefill_boundary_bytes;
      expect(more).toBeGreaterThanOrEqual(2 * 64 * 4);
      expect(more).toBeLessThan(3 * 64 * 4);
    });
  }

  it('streams the split reply token by token, the same text as unsplit', async () => {
    const body = { max_tokens: 30, temperature: 0, lazy: { schedule: 'bos,1:0.5,3:0.5' } };
    const whole = await complete({ LAYER_GROUPS: '1' }, body);
    const res = await withEnv({ LAYER_GROUPS: '3' }, '/v1/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: PROMPT, stream: true, ...body }),
    });
    expect(res.status).toBe(200);
    const { events, reads } = await readEvents(res);
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as { choices: { text: string }[] });
    const text = chunks.map((c) => c.choices[0]?.text ?? '').join('');
    expect(text).toBe(whole.body.choices[0].text);
    expect(chunks.filter((c) => (c.choices[0]?.text ?? '') !== '').length).toBeGreaterThan(5);
    expect(reads).toBeGreaterThan(5);
  });

  it('a streamed split prefill in steps (PREFILL_STEP_TOKENS) sends an SSE comment as each group of each step is done, all before the first token; the openai SDK reads the same text as unstreamed', async () => {
    // STREAM_KEEPALIVE_MS 0: a comment at every point the prefill reports (5 s apart by default)
    const G = 2;
    const vars = { LAYER_GROUPS: String(G), PREFILL_STEP_TOKENS: '7', STREAM_KEEPALIVE_MS: '0' };
    const body = { max_tokens: 30, temperature: 0, lazy: { enabled: false } };
    const whole = await complete({ LAYER_GROUPS: '1' }, body);
    const res = await withEnv(vars, '/v1/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: PROMPT, stream: true, ...body }),
    });
    expect(res.status).toBe(200);
    const { events, comments } = await readEvents(res);
    const chunks = events
      .slice(0, -1)
      .map((e) => JSON.parse(e) as { choices: { text: string }[]; lazy_stats?: Completion['body']['lazy_stats'] });
    expect(chunks.map((c) => c.choices[0]?.text ?? '').join('')).toBe(whole.body.choices[0].text);
    const steps = chunks.at(-1)!.lazy_stats!.split!.prefill_steps;
    expect(steps).toBe(Math.ceil(whole.body.usage.prompt_tokens / 7));
    // one as each group of each step of the prefill is done (the groups call the front's hook before
    // handing on, the front once the chain answers); none once tokens flow
    expect(comments.length).toBe(steps * G);
    expect(comments.every((c) => c.after === 0 && c.text === 'prefilling')).toBe(true);

    const client = new OpenAI({
      apiKey: 'unused',
      baseURL: `${BASE}/v1`,
      maxRetries: 0,
      fetch: async (url: string | URL | Request, init?: RequestInit) =>
        app.fetch(new Request(url, init), { ...env, ...vars }, createExecutionContext()),
    });
    const stream = await client.completions.create({
      model: MODEL,
      prompt: PROMPT,
      stream: true,
      ...body,
    } as OpenAI.CompletionCreateParamsStreaming);
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
    expect(text).toBe(whole.body.choices[0].text);
  });

  it('the whole model streamed sends an SSE comment after each layer of its prefill, none while it decodes', async () => {
    const body = { max_tokens: 20, temperature: 0, lazy: { enabled: false } };
    const whole = await complete({ LAYER_GROUPS: '1' }, body);
    const res = await withEnv({ LAYER_GROUPS: '1', STREAM_KEEPALIVE_MS: '0' }, '/v1/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: PROMPT, stream: true, ...body }),
    });
    const { events, comments } = await readEvents(res);
    expect(
      events
        .slice(0, -1)
        .map((e) => (JSON.parse(e) as { choices: { text: string }[] }).choices[0]?.text ?? '')
        .join(''),
    ).toBe(whole.body.choices[0].text);
    expect(comments.map((c) => c.after)).toEqual([0, 0, 0, 0, 0]); // stories260K: 5 layers
  });

  it("a request that finds every chain busy gets 503 server_busy, never a share of another request's state; the log notes it as load, not as a fault", async () => {
    const vars = { LAYER_GROUPS: '2', GROUP_CHAINS: '1' };
    const front = await frontModel(env);
    const held = await acquirePoolChain({ ...env, ...vars }, front.config);
    const errors = vi.spyOn(console, 'error').mockImplementation(() => {});
    const infos = vi.spyOn(console, 'info').mockImplementation(() => {});
    try {
      const busy = await complete(vars, { max_tokens: 5, temperature: 0 });
      expect(busy.status).toBe(503);
      expect(busy.body.error!.code).toBe('server_busy');
      expect(errors).not.toHaveBeenCalled();
      expect(infos.mock.calls.flat().join(' ')).toMatch(
        /POST \/v1\/completions answered 503 server_busy \(load, not a fault\)/,
      );
    } finally {
      errors.mockRestore();
      infos.mockRestore();
      await held.release();
    }
    const after = await complete(vars, { max_tokens: 5, temperature: 0 });
    expect(after.status).toBe(200);
  });

  it('a step called on the first group goes down the chain group to group: every group computes, the answer has each one’s figures and the last one’s logits', async () => {
    const front = await frontModel(env);
    const G = 3;
    const names = poolNames(1, G);
    const stubs = poolChain(env, 1, G);
    const lease = 'hand-on test';
    for (const [g, s] of stubs.entries()) {
      const r = await s.acquire({ groups: G, group: g, lease, exclusive: g === 0 });
      expect(r.ok).toBe(true);
    }
    try {
      const tokens = [1, 400, 300, 13];
      const r = await stubs[0].step({
        groups: G,
        group: 0,
        lease,
        input: { tokens, start: 0 },
        schedule: null,
        next: names.slice(1),
      });
      if (!r.ok) throw new Error(r.error.message);
      expect('logits' in r.output && r.output.logits.length).toBe(front.config.vocabSize);
      expect(r.stats.map((x) => x.computedPerLayer.length)).toEqual([2, 2, 1]); // stories260K's 5 layers as 2 + 2 + 1
      expect(r.stats.every((x) => x.computedPerLayer.every((c) => c === tokens.length))).toBe(true);
      expect(r.handed_bytes).toBeGreaterThan(2 * tokens.length * front.config.dim * 4); // two frontiers of 4 tokens' hidden states
      expect((await Promise.all(stubs.map((s) => s.probe()))).map((p) => p.tokens)).toEqual([4, 4, 4]);
      // a group below that refuses (here: not held) is answered as it is, from the top
      await stubs[2].release(lease);
      const refused = await stubs[0].step({
        groups: G,
        group: 0,
        lease,
        input: { tokens: [7], start: 4 },
        schedule: null,
        next: names.slice(1),
      });
      expect(refused.ok).toBe(false);
      expect(!refused.ok && refused.error.message).toMatch(/Layer group 2 of 3 is no longer held by this request/);
    } finally {
      await Promise.all(stubs.map((s) => s.release(lease)));
    }
  });

  it("a group taken over by another lease refuses the old one's steps (lease_lost)", async () => {
    const front = await frontModel(env);
    const vars = { LAYER_GROUPS: '2', GROUP_CHAINS: '1' };
    const a = await acquirePoolChain({ ...env, ...vars }, front.config);
    const seq = a.frontState();
    await a.runner(seq, [1, 400, 300], { schedule: null });
    // a later holder of group 1 (as after group 0's lease went idle): the old lease may not go on
    const other = await poolChain(env, 0, 2)[1].acquire({ groups: 2, group: 1, lease: 'other', exclusive: false });
    expect(other.ok).toBe(true);
    await expect(a.runner(seq, [13], { schedule: null })).rejects.toThrow(/no longer held/);
    await a.release();
    await poolChain(env, 0, 2)[1].release('other');
  });

  for (const G of [2, 3]) {
    it(`${G} groups, a dense prefill sent in steps of at most 7 tokens (PREFILL_STEP_TOKENS): the same text and per-layer work as the whole model; a lazy one is not cut`, async () => {
      for (const [body, dense] of [
        [CASES[0][1], true],
        [CASES[2][1], false],
      ] as const) {
        const whole = await complete({ LAYER_GROUPS: '1' }, body);
        const split = await complete({ LAYER_GROUPS: String(G), PREFILL_STEP_TOKENS: '7' }, body);
        expect(split.status).toBe(200);
        expect(split.body.choices[0]).toEqual(whole.body.choices[0]);
        const { split: s, ...stats } = split.body.lazy_stats;
        for (const k of ['computed_per_layer', 'prefill_computed_per_layer', 'aux_entries', 'kv_entries'] as const)
          expect(stats[k]).toEqual(whole.body.lazy_stats[k]);
        expect(s!.groups).toBe(G);
        expect(s!.prefill_steps).toBe(dense ? Math.ceil(split.body.usage.prompt_tokens / 7) : 1);
      }
    });
  }

  it('a held chain keeps a call in flight to each of its objects (so none is evicted while the others compute) until it is released', async () => {
    const front = await frontModel(env);
    const vars = { LAYER_GROUPS: '2', HEAD_GROUPS: '1', GROUP_CHAINS: '1' };
    const a = await acquirePoolChain({ ...env, ...vars }, front.config);
    // each probe goes through the chain's own stub, so it arrives after that stub's hold()
    expect((await Promise.all(a.stubs.map((s) => s.probe()))).map((p) => p.holds)).toEqual([1, 1, 1]);
    await a.runner(a.frontState(), [1, 400, 300], { schedule: null });
    expect((await Promise.all(a.stubs.map((s) => s.probe()))).map((p) => p.holds)).toEqual([1, 1, 1]);
    await a.release();
    expect((await Promise.all(a.stubs.map((s) => s.probe()))).map((p) => p.holds)).toEqual([0, 0, 0]);
  });

  it('a group restarted in the middle of a stateless request (what a wrangler dev reload or a deploy does) fails the next step saying so; the chain then serves the next request', async () => {
    const front = await frontModel(env);
    const vars = { LAYER_GROUPS: '3', GROUP_CHAINS: '1' };
    const whole = await complete({ LAYER_GROUPS: '1' }, { max_tokens: 8, temperature: 0 });
    const a = await acquirePoolChain({ ...env, ...vars }, front.config);
    const seq = a.frontState();
    await a.runner(seq, [1, 400, 300], { schedule: null });
    await runInDurableObject(poolChain(env, 0, 3)[1] as DurableObjectStub<LayerGroup>, (_o: LayerGroup, state) => {
      try {
        state.abort('test: restart this group');
      } catch {
        // abort throws in the caller by design
      }
    }).catch(() => undefined);
    // group 0 reaches the restarted group 1 afresh: it holds no request, so the step fails, never runs on an empty state
    await expect(a.runner(seq, [13], { schedule: null })).rejects.toThrow(
      /Layer group 1 of 3 is no longer held by this request \(holding no request/,
    );
    await a.release();
    const after = await complete(vars, { max_tokens: 8, temperature: 0 });
    expect(after.status).toBe(200);
    expect(after.body.choices[0]).toEqual(whole.body.choices[0]);
  });

  for (const G of [2, 3]) {
    for (const [name, body] of CASES.slice(0, 2)) {
      it(`${G} groups with the embedding in the front (EMBED_IN_FRONT), ${name}: the same text and per-layer work as the whole model; the front's frontier crosses one more boundary`, async () => {
        const whole = await complete({ LAYER_GROUPS: '1' }, body);
        const inGroup = await complete({ LAYER_GROUPS: String(G) }, body);
        const inFront = await complete({ LAYER_GROUPS: String(G), EMBED_IN_FRONT: '1' }, body);
        expect(inFront.status).toBe(200);
        expect(inFront.body.choices[0]).toEqual(whole.body.choices[0]);
        const { split: s, ...stats } = inFront.body.lazy_stats;
        for (const k of ['computed_per_layer', 'prefill_computed_per_layer', 'aux_entries', 'kv_entries'] as const)
          expect(stats[k]).toEqual(whole.body.lazy_stats[k]);
        // the embedded prompt [tokens, dim] f32 crosses front -> group 0 on top of what crossed before
        const prompt = (front: typeof inFront) => front.body.lazy_stats.split!.prefill_boundary_bytes;
        expect(prompt(inFront)).toBeGreaterThan(prompt(inGroup) + 10 * 64 * 4);
        expect(s!.decode_boundary_bytes_per_step).toBeGreaterThan(
          inGroup.body.lazy_stats.split!.decode_boundary_bytes_per_step,
        );
      });
    }
  }
});

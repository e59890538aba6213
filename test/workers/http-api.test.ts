import { env } from 'cloudflare:workers';
import { Hono } from 'hono';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { SequenceState } from '../../src/engine/caches.js';
import { generate } from '../../src/engine/generate.js';
import { defaultSchedule, formatSchedule, parseSchedule } from '../../src/engine/policy.js';
import { sha256Hex } from '../../src/model/manifest.js';
import { PLAIN_CHAT_TEMPLATE } from '../../src/shards/build-shards.js';
import type { AppEnv } from '../../src/worker/http/app-env.js';
import { MAX_BODY_BYTES } from '../../src/worker/http/app.js';
import { apiKeyId, requireApiKey, resetOpenNotice } from '../../src/worker/http/auth.js';
import { encodeChat, renderChat } from '../../src/model/chat-prompt.js';
import { DEFAULTS } from '../../src/worker/config.js';
import { planJob } from '../../src/worker/job/plan.js';
import { prefillSpeed } from '../../src/worker/job/budget.js';
import { getModel } from '../../src/worker/model-store.js';
import { MODEL, post, readEvents, withEnv, worker } from '../support/http.js';

// Only these types are used in the assertions below; the bodies come over HTTP as JSON.
interface Completion {
  id: string;
  object: string;
  created: number;
  model: string;
  choices: { text: string; index: number; logprobs: null; finish_reason: string }[];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  lazy_stats: {
    schedule: string;
    completion_tokens: number;
    computed_per_layer: number[];
    flops_ratio: number;
    prefill_ms: number;
    decode_ms: number;
  };
}
interface ChatCompletion extends Omit<Completion, 'choices'> {
  choices: { index: number; message: { role: string; content: string }; finish_reason: string }[];
}

const json = async <T>(res: Response): Promise<T> => (await res.json()) as T;
const complete = async (body: object) => {
  const res = await post('/v1/completions', { model: MODEL, ...body });
  expect(res.status, await res.clone().text()).toBe(200);
  return json<Completion>(res);
};
const chatComplete = async (body: object) => {
  const res = await post('/v1/chat/completions', { model: MODEL, ...body });
  expect(res.status, await res.clone().text()).toBe(200);
  return json<ChatCompletion>(res);
};

/** Every error of the API: the status, and OpenAI's body with exactly these four fields. */
async function expectError(res: Response, status: number, code: string | null, param: string | null = null) {
  const text = await res.text();
  expect(res.status, text).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  const body = JSON.parse(text) as { error: Record<string, unknown> };
  expect(Object.keys(body)).toEqual(['error']);
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(body.error.message).toEqual(expect.any(String));
  expect((body.error.message as string).length).toBeGreaterThan(10);
  expect(body.error.type).toBe(status >= 500 ? 'server_error' : 'invalid_request_error');
  expect(body.error.code).toBe(code);
  expect(body.error.param).toBe(param);
  expect(text).not.toMatch(/\bat .*\.(ts|js):\d+/); // never a stack trace
  return body.error as { message: string };
}

afterEach(() => vi.restoreAllMocks());

describe('GET /healthz and /v1/models', () => {
  it('reports health with the served model loaded', async () => {
    const res = await worker('/healthz');
    expect(res.status).toBe(200);
    const body = (await res.json()) as { status: string; model: string; memory: Record<string, unknown> };
    expect(body).toMatchObject({ status: 'ok', model: MODEL });
    // stories260K at its 512-token context fits a deployed isolate with room to spare.
    expect(body.memory).toMatchObject({
      budget_mb: 128,
      deployed_isolate_mb: 128,
      fits_deployed_isolate: true,
      context_tokens: 512,
      kv_format: 'f32',
    });
    expect(body.memory.measured_wasm_heap_mb).toBeGreaterThanOrEqual(16);
    // workerd exposes no JS heap figure: reported as such, not as 0.
    expect(body.memory.measured_js_heap_mb).toBeNull();
    expect(body.memory.measured_in).toMatch(/JS heap: not exposed/);
    // the estimate's parts, as the budget check counted them, add up to its total
    const est = body.memory.estimate_mb as Record<string, number>;
    const parts = ['weights', 'weight_copies', 'kv_cache', 'aux_cache', 'activations', 'tokenizer', 'runtime'];
    expect(Object.keys(est).sort()).toEqual([...parts, 'total'].sort());
    expect(parts.reduce((t, k) => t + est[k], 0)).toBeCloseTo(est.total, 0);
  });

  it('serves with the KV cache held as int8 when KV_FORMAT says so, and counts it so', async () => {
    const f32 = (await (await worker('/healthz')).json()) as { memory: { estimate_mb: { kv_cache: number } } };
    const res = await withEnv({ KV_FORMAT: 'int8' }, '/healthz');
    expect(res.status).toBe(200);
    const int8 = (await res.json()) as { memory: { kv_format: string; estimate_mb: { kv_cache: number } } };
    expect(int8.memory.kv_format).toBe('int8');
    // stories260K: kvDim 32, so an int8 row (32 + 4 bytes) is 36/128 of an f32 one.
    expect(int8.memory.estimate_mb.kv_cache).toBeCloseTo((f32.memory.estimate_mb.kv_cache * 36) / 128, 1);
    const done = await withEnv({ KV_FORMAT: 'int8' }, '/v1/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'Once upon a time', max_tokens: 8, temperature: 0 }),
    });
    expect(done.status).toBe(200);
    expect(((await done.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(8);
  });

  it("refuses a KV_FORMAT it does not know, naming the setting in the answer and the log (a server fault, not the client's)", async () => {
    const logged = vi.spyOn(console, 'error').mockImplementation(() => {});
    const res = await withEnv({ KV_FORMAT: 'bf16' }, '/healthz');
    expect(res.status).toBe(503);
    const body = (await res.json()) as { status: string; reason: string; error: { code: string; message: string } };
    expect(body.status).toBe('unavailable');
    expect(body.reason).toMatch(/KV_FORMAT.*"bf16"/);
    expect(body.error).toMatchObject({ code: 'server_misconfigured', message: body.reason, type: 'server_error' });
    expect(logged.mock.calls.flat().join(' ')).toMatch(/KV_FORMAT.*f32, f16, int8.*"bf16"/);
  });

  it('/healthz says why when the model cannot be served, as JSON with a 503: never a bare 500', async () => {
    const logged = vi.spyOn(console, 'error').mockImplementation(() => {});
    const cases: [Partial<Cloudflare.Env>, RegExp][] = [
      [{ MODEL_NAME: 'no-such-model' }, /no-such-model\/manifest\.json/],
      [{ MEMORY_BUDGET_MB: '1', CONTEXT_TOKENS: '304' }, /memory budget/],
      [{ LAYER_GROUPS: 'many' }, /LAYER_GROUPS must be an integer >= 1, got "many"/],
    ];
    for (const [vars, why] of cases) {
      const res = await withEnv(vars, '/healthz');
      expect(res.status, JSON.stringify(vars)).toBe(503);
      const body = (await res.json()) as { status: string; reason: string; error: { code: string } };
      expect(body.status).toBe('unavailable');
      expect(body.reason).toMatch(why);
    }
    expect(logged).toHaveBeenCalled();
  });

  it('lists the served model in OpenAI shape, with its context length', async () => {
    const res = await worker('/v1/models');
    expect(res.status).toBe(200);
    const body = await json<{ object: string; data: Record<string, unknown>[] }>(res);
    expect(body.object).toBe('list');
    expect(body.data).toEqual([
      expect.objectContaining({
        id: MODEL,
        object: 'model',
        owned_by: 'lazy-edge',
        context_length: 512,
        created: expect.any(Number),
      }),
    ]);
    const one = await worker(`/v1/models/${MODEL}`);
    expect(await one.json()).toEqual(body.data[0]);
    await expectError(await worker('/v1/models/gpt-4o'), 404, 'model_not_found', 'model');
  });
});

describe('POST /v1/completions', () => {
  it('answers in OpenAI shape with usage, lazy_stats and a Server-Timing header', async () => {
    const res = await post('/v1/completions', {
      model: MODEL,
      prompt: 'Once upon a time',
      max_tokens: 40,
      temperature: 0,
      user: 'someone',
      n: 1,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('server-timing')).toMatch(/^prefill;dur=\d+(\.\d+)?, decode;dur=\d+(\.\d+)?$/);
    const body = await json<Completion>(res);
    expect(body).toEqual({
      id: expect.stringMatching(/^cmpl-[0-9a-f]{32}$/),
      object: 'text_completion',
      created: expect.any(Number),
      model: MODEL,
      choices: [{ text: expect.any(String), index: 0, logprobs: null, finish_reason: 'length' }],
      usage: { prompt_tokens: 5, completion_tokens: 40, total_tokens: 45, prompt_tokens_details: { cached_tokens: 0 } },
      lazy_stats: expect.objectContaining({
        schedule: formatSchedule(defaultSchedule(5)),
        prompt_tokens: 5,
        completion_tokens: 40,
      }),
    });
    expect(body.choices[0].text).toMatch(/^, there was a little/);
    const timing = res.headers.get('server-timing')!;
    expect(timing).toBe(
      `prefill;dur=${body.lazy_stats.prefill_ms.toFixed(2)}, decode;dur=${body.lazy_stats.decode_ms.toFixed(2)}`,
    );
  });

  it('defaults to 16 tokens like OpenAI, and takes the prompt as a list of one string', async () => {
    const body = await complete({ prompt: 'Once upon a time', temperature: 0 });
    expect(body.usage.completion_tokens).toBe(16);
    const listed = await complete({ prompt: ['Once upon a time'], temperature: 0 });
    expect(listed.choices[0].text).toBe(body.choices[0].text);
  });

  it('runs dense with lazy.enabled false, and takes a schedule as a spec string or an object', async () => {
    const prompt = 'Tom had a big red ball. He liked to throw it high in the sky. '.repeat(4);
    const dense = await complete({ prompt, max_tokens: 30, temperature: 0, lazy: { enabled: false } });
    expect(dense.lazy_stats.schedule).toBe('dense');
    expect(dense.lazy_stats.flops_ratio).toBe(1);
    const bySpec = await complete({
      prompt,
      max_tokens: 30,
      temperature: 0,
      lazy: { enabled: true, schedule: 'bos,2:0.5' },
    });
    const byObject = await complete({
      prompt,
      max_tokens: 30,
      temperature: 0,
      lazy: { schedule: { prune: [{ layer: 2, keep: 0.5 }], keep_first: true } },
    });
    expect(bySpec.lazy_stats.schedule).toBe('bos,2:0.5');
    expect(byObject.lazy_stats).toEqual({
      ...bySpec.lazy_stats,
      prefill_ms: expect.any(Number),
      decode_ms: expect.any(Number),
      decode_tokens_per_s: expect.any(Number),
    });
    expect(byObject.choices[0].text).toBe(bySpec.choices[0].text);
    expect(bySpec.lazy_stats.flops_ratio).toBeLessThan(1);
  });

  it('ends before a stop string (string or list), with finish_reason "stop"', async () => {
    const full = (await complete({ prompt: 'Once upon a time', max_tokens: 40, temperature: 0 })).choices[0].text;
    const at = full.indexOf(' named');
    expect(at).toBeGreaterThan(0);
    const one = await complete({ prompt: 'Once upon a time', max_tokens: 40, temperature: 0, stop: ' named' });
    expect(one.choices[0]).toMatchObject({ text: full.slice(0, at), finish_reason: 'stop' });
    const four = await complete({
      prompt: 'Once upon a time',
      max_tokens: 40,
      temperature: 0,
      stop: ['zebra', 'named', 'xyz', 'qqq'],
    });
    expect(four.choices[0]).toMatchObject({ text: full.slice(0, at + 1), finish_reason: 'stop' });
  });

  it('is reproducible with a seed, and the seed matters', async () => {
    const req = { prompt: 'Lily saw a', max_tokens: 40, temperature: 1, top_p: 0.95 };
    const a = await complete({ ...req, seed: 11 });
    const b = await complete({ ...req, seed: 11 });
    const c = await complete({ ...req, seed: 12 });
    expect(b.choices[0].text).toBe(a.choices[0].text);
    expect(c.choices[0].text).not.toBe(a.choices[0].text);
  });

  it('streams OpenAI chunks that reassemble to the non-streamed text for the same seed', async () => {
    const req = { prompt: 'One day, a little bird', max_tokens: 60, temperature: 0.8, top_p: 0.9, seed: 42 };
    const whole = await complete(req);
    const res = await post('/v1/completions', {
      model: MODEL,
      ...req,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    const { events } = await readEvents(res);
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as Completion);
    const usage = chunks.pop()!;
    const finish = chunks.pop()!;
    expect(chunks.length).toBeGreaterThan(10); // one event per released piece of text, not one blob
    for (const ch of chunks) {
      // with include_usage, OpenAI sends "usage": null in every chunk before the usage chunk
      expect(ch).toEqual({
        id: finish.id,
        object: 'text_completion',
        created: finish.created,
        model: MODEL,
        choices: [{ text: expect.any(String), index: 0, logprobs: null, finish_reason: null }],
        usage: null,
      });
    }
    expect(chunks.map((ch) => ch.choices[0].text).join('')).toBe(whole.choices[0].text);
    expect(finish.choices).toEqual([
      { text: '', index: 0, logprobs: null, finish_reason: whole.choices[0].finish_reason },
    ]);
    expect(finish.usage).toBeNull();
    expect(finish.lazy_stats.computed_per_layer).toEqual(whole.lazy_stats.computed_per_layer);
    expect(usage.choices).toEqual([]);
    expect(usage.usage).toEqual(whole.usage);
  });

  it('gives the same results to concurrent requests as to sequential ones', async () => {
    const a = { prompt: 'The sun was', max_tokens: 30, temperature: 0.9, seed: 3 };
    const b = { prompt: 'Ben had a toy car.', max_tokens: 30, temperature: 0, lazy: { enabled: false } };
    const [ca, cb] = await Promise.all([complete(a), complete(b)]);
    expect(ca.choices[0].text).toBe((await complete(a)).choices[0].text);
    expect(cb.choices[0].text).toBe((await complete(b)).choices[0].text);
  });

  it('survives a client that hangs up mid-stream', async () => {
    const res = await post('/v1/completions', {
      model: MODEL,
      prompt: '',
      max_tokens: 300,
      temperature: 1,
      seed: 5,
      stream: true,
    });
    const reader = res.body!.getReader();
    expect((await reader.read()).done).toBe(false);
    await reader.cancel();
    expect((await complete({ prompt: 'Once upon a time', max_tokens: 5, temperature: 0 })).choices[0].text).toMatch(
      /^, there/,
    );
  });
});

describe('POST /v1/chat/completions', () => {
  const messages = [
    { role: 'system', content: 'A story for children.' },
    {
      role: 'user',
      content: [
        { type: 'text', text: 'Once upon a time there was a girl named ' },
        { type: 'text', text: 'Lily.' },
      ],
    },
  ];

  it('renders messages with the manifest template: the same as completing the rendered text', async () => {
    const model = await getModel(env);
    const rendered = renderChat(model.manifest.chatTemplate, messages as never);
    expect(rendered).toBe('A story for children.\nOnce upon a time there was a girl named Lily.\n');
    const req = { max_tokens: 50, temperature: 0.7, seed: 9 };
    const chat = await chatComplete({ ...req, messages, user: 'u1' });
    const plain = await complete({ ...req, prompt: rendered });
    expect(chat).toEqual({
      id: expect.stringMatching(/^chatcmpl-[0-9a-f]{32}$/),
      object: 'chat.completion',
      created: expect.any(Number),
      model: MODEL,
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content: plain.choices[0].text, refusal: null },
          logprobs: null,
          finish_reason: plain.choices[0].finish_reason,
        },
      ],
      usage: plain.usage,
      lazy_stats: expect.objectContaining({ computed_per_layer: plain.lazy_stats.computed_per_layer }),
    });
    expect(chat.usage.prompt_tokens).toBe(model.tokenizer.encode(rendered, { bos: true }).length);
  });

  it("ranks by the question under signal:query: the engine's reply given the template's question span, not the paper's", async () => {
    const story =
      'Once upon a time there was a girl named Lily. She found a red ball in the park. She played with her dog Max all day. The sun was warm and the birds sang. Her mom called her home for dinner.';
    const long = [{ role: 'user' as const, content: `${story} ${story}\n\nWhat did Lily find in the park?` }];
    const spec = 'signal:query,heads:max,pool:3,1:0.4,3:0.5';
    const chat = await chatComplete({ messages: long, max_tokens: 20, temperature: 0, lazy: { schedule: spec } });
    const model = await getModel(env);
    const { prompt, question } = encodeChat(model.tokenizer, model.manifest.chatTemplate, long);
    expect(question).not.toBeNull();
    const run = (schedule: string, q: typeof question) =>
      generate(model, new SequenceState(model.config), prompt, {
        maxTokens: 20,
        sampler: { temperature: 0, topP: 1, topK: 0, seed: 1 },
        schedule: parseSchedule(schedule),
        question: q,
      });
    const engine = await run(spec, question);
    expect(chat.choices[0].message.content).toBe(engine.text);
    expect(chat.lazy_stats.schedule).toBe(spec);
    expect((chat.lazy_stats as unknown as { prefill_computed_per_layer: number[] }).prefill_computed_per_layer).toEqual(
      engine.stats.prefill_computed_per_layer,
    );
    const paper = await run('signal:last,heads:max,pool:3,1:0.4,3:0.5', null);
    expect(paper.stats.computed_per_layer).not.toEqual(engine.stats.computed_per_layer);
    // Text without a question cannot rank by one: a clear 400, not a silent fallback.
    const res = await post('/v1/completions', { model: MODEL, prompt: story, max_tokens: 4, lazy: { schedule: spec } });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string; param: string } }).error).toMatchObject({
      param: 'lazy.schedule',
      message: expect.stringMatching(/signal:window:K/),
    });
  });

  it('accepts max_completion_tokens and defaults to the rest of the context', async () => {
    const capped = await chatComplete({ messages, max_completion_tokens: 7, temperature: 0 });
    expect(capped.usage.completion_tokens).toBe(7);
    expect(capped.choices[0].finish_reason).toBe('length');
    const open = await chatComplete({ messages, temperature: 0 });
    expect(open.usage.total_tokens).toBeLessThanOrEqual(512);
    expect(open.usage.completion_tokens).toBeGreaterThan(16);
  });

  it('streams a role chunk, content deltas, a finish chunk and [DONE], reassembling to the same reply', async () => {
    const req = { messages, max_tokens: 60, temperature: 0.8, seed: 21 };
    const whole = await chatComplete(req);
    const res = await post('/v1/chat/completions', { model: MODEL, ...req, stream: true });
    const { events } = await readEvents(res);
    expect(events.at(-1)).toBe('[DONE]');
    type Chunk = {
      id: string;
      object: string;
      choices: {
        index: number;
        delta: { role?: string; content?: string };
        logprobs: null;
        finish_reason: string | null;
      }[];
      lazy_stats?: unknown;
    };
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as Chunk);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id)).toBe(true);
    expect(chunks[0].choices).toEqual([
      { index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null },
    ]);
    const finish = chunks.at(-1)!;
    expect(finish.choices).toEqual([
      { index: 0, delta: {}, logprobs: null, finish_reason: whole.choices[0].finish_reason },
    ]);
    expect(finish.lazy_stats).toBeDefined();
    const text = chunks
      .slice(1, -1)
      .map((c) => c.choices[0].delta.content)
      .join('');
    expect(text).toBe(whole.choices[0].message.content);
  });

  it('renders any manifest template, developer messages as system, text literally', () => {
    const t = {
      system: '<s>{content}</s>',
      user: 'U: {content}\n',
      assistant: 'A: {content}\n',
      generationPrompt: 'A:',
    };
    const msgs = [
      { role: 'developer', content: 'be brief' },
      { role: 'user', content: 'costs $& and {content}' },
      { role: 'assistant', content: 'ok' },
    ] as const;
    expect(renderChat(t, msgs as never)).toBe('<s>be brief</s>U: costs $& and {content}\nA: ok\nA:');
    expect(renderChat(PLAIN_CHAT_TEMPLATE, [{ role: 'user', content: 'Hi' }])).toBe('Hi\n');
  });
});

describe('time budget (REQUEST_BUDGET_MS)', () => {
  it('ends a generation that reaches the budget with what it has, finish_reason "time_limit" and a note saying so (never "length")', async () => {
    const req = { method: 'POST', headers: { 'Content-Type': 'application/json' } };
    const body = JSON.stringify({ model: MODEL, prompt: 'Once upon a time', max_tokens: 50, temperature: 0 });
    // An isolate that has measured no prefill lets the request start (with one measured, a budget of 0 refuses it).
    prefillSpeed.forget(`${MODEL}|whole`);
    const cut = await json<Completion>(await withEnv({ REQUEST_BUDGET_MS: '0' }, '/v1/completions', { ...req, body }));
    expect(cut.choices[0].finish_reason).toBe('time_limit');
    expect((cut.lazy_stats as { note?: string }).note).toMatch(/REQUEST_BUDGET_MS/);
    expect(cut.usage.completion_tokens).toBeGreaterThanOrEqual(1);
    expect(cut.usage.completion_tokens).toBeLessThan(50);
    const full = await json<Completion>(
      await withEnv({ REQUEST_BUDGET_MS: '600000' }, '/v1/completions', { ...req, body }),
    );
    expect(full.usage.completion_tokens).toBe(50);
    expect(full.choices[0].text.startsWith(cut.choices[0].text)).toBe(true);

    const streamed = await withEnv({ REQUEST_BUDGET_MS: '0' }, '/v1/completions', {
      ...req,
      body: body.replace('}', ',"stream":true}'),
    });
    const { events } = await readEvents(streamed);
    const finish = JSON.parse(events.at(-2)!) as Completion;
    expect(finish.choices[0].finish_reason).toBe('time_limit');
    expect(finish.lazy_stats.completion_tokens).toBeLessThan(50);
  });

  it("refuses before it starts a prefill that this isolate's measured speed cannot finish within the budget: 503 naming it, nothing streamed", async () => {
    const path = `${MODEL}|whole`;
    // As if this isolate had only measured a very slow prefill.
    prefillSpeed.forget(path);
    prefillSpeed.record(path, 1000, 1000);
    try {
      for (const stream of [false, true]) {
        const res = await withEnv({ REQUEST_BUDGET_MS: '60000' }, '/v1/completions', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ model: MODEL, prompt: 'Once upon a time', max_tokens: 5, stream }),
        });
        const err = await expectError(res, 503, 'request_budget_exceeded');
        expect(err.message).toMatch(/REQUEST_BUDGET_MS/);
      }
    } finally {
      prefillSpeed.forget(path);
    }
    const ok = await post('/v1/completions', { model: MODEL, prompt: 'Once upon a time', max_tokens: 5 });
    expect(ok.status).toBe(200);
  });

  it("uses wrangler.toml's budget by default", async () => {
    expect(Number(env.REQUEST_BUDGET_MS)).toBeGreaterThan(0);
    // What a request is given: its deadline is its start plus the configured budget, or the default one when unset.
    const model = await getModel(env);
    const at = { promptParam: 'prompt', maxTokensParam: 'max_tokens', defaultMaxTokens: 1 };
    expect(planJob(env, 1000, model, [1], {}, at).deadline).toBe(1000 + Number(env.REQUEST_BUDGET_MS));
    expect(planJob({ MODEL_NAME: MODEL }, 1000, model, [1], {}, at).deadline).toBe(1000 + DEFAULTS.REQUEST_BUDGET_MS);
  });
});

describe('bad input: a 4xx with an OpenAI error body', () => {
  const completion = (body: unknown) => post('/v1/completions', body);
  const ok = { model: MODEL, prompt: 'Once upon a time' };
  const long = 'Once upon a time there was a dog named Max. '.repeat(60);

  it.each<[string, unknown, number, string | null, string | null]>([
    ['malformed JSON', '{"model": "stories260K", "prompt": ', 400, 'invalid_json', null],
    ['a body that is not an object', '[1, 2]', 400, 'invalid_type', null],
    ['a missing model', { prompt: 'hi' }, 400, 'missing_required_parameter', 'model'],
    ['a missing prompt', { model: MODEL }, 400, 'missing_required_parameter', 'prompt'],
    ['a prompt of the wrong type', { ...ok, prompt: 42 }, 400, 'invalid_value', 'prompt'],
    ['a prompt list of two strings', { ...ok, prompt: ['a', 'b'] }, 400, 'invalid_value', 'prompt'],
    [
      'a prompt of token ids outside the vocabulary',
      { ...ok, prompt: [1, 2, 99999] },
      400,
      'invalid_value',
      'prompt[2]',
    ],
    ['a prompt list of two token-id lists', { ...ok, prompt: [[1], [2]] }, 400, 'invalid_value', 'prompt'],
    ['max_tokens as a string', { ...ok, max_tokens: '10' }, 400, 'invalid_type', 'max_tokens'],
    ['max_tokens not an integer', { ...ok, max_tokens: 2.5 }, 400, 'invalid_type', 'max_tokens'],
    ['max_tokens 0', { ...ok, max_tokens: 0 }, 400, 'invalid_value', 'max_tokens'],
    ['max_tokens beyond the context', { ...ok, max_tokens: 100000 }, 400, 'invalid_value', 'max_tokens'],
    ['temperature above 2', { ...ok, temperature: 3 }, 400, 'invalid_value', 'temperature'],
    ['a negative seed', { ...ok, seed: -1 }, 400, 'invalid_value', 'seed'],
    ['stream not a boolean', { ...ok, stream: 'yes' }, 400, 'invalid_type', 'stream'],
    ['five stop strings', { ...ok, stop: ['a', 'b', 'c', 'd', 'e'] }, 400, 'invalid_value', 'stop'],
    ['a stop of the wrong type', { ...ok, stop: 3 }, 400, 'invalid_value', 'stop'],
    ['n = 2', { ...ok, n: 2 }, 400, 'invalid_value', 'n'],
    ['an unknown model', { ...ok, model: 'gpt-4o' }, 404, 'model_not_found', 'model'],
    ['a prompt longer than the context', { ...ok, prompt: long }, 400, 'context_length_exceeded', 'prompt'],
    [
      'prompt + max_tokens over the context',
      { ...ok, prompt: long.slice(0, 1500), max_tokens: 400 },
      400,
      'context_length_exceeded',
      'prompt',
    ],
    [
      'a schedule naming a missing layer',
      { ...ok, lazy: { schedule: 'bos,9:0.5' } },
      400,
      'invalid_schedule',
      'lazy.schedule',
    ],
    ['a schedule that does not parse', { ...ok, lazy: { schedule: 'half' } }, 400, 'invalid_schedule', 'lazy.schedule'],
    [
      'a schedule object keeping more than all',
      { ...ok, lazy: { schedule: { prune: [{ layer: 1, keep: 2 }] } } },
      400,
      'invalid_schedule',
      'lazy.schedule',
    ],
    ['a schedule of the wrong type', { ...ok, lazy: { schedule: 5 } }, 400, 'invalid_value', 'lazy.schedule'],
    [
      'a schedule with lazy disabled',
      { ...ok, lazy: { enabled: false, schedule: 'bos' } },
      400,
      'invalid_value',
      'lazy.schedule',
    ],
    ['an unknown lazy option', { ...ok, lazy: { enable: true } }, 400, 'unknown_parameter', 'lazy'],
    ['logprobs beyond 5', { ...ok, logprobs: 6 }, 400, 'invalid_value', 'logprobs'],
    ['echo', { ...ok, echo: true }, 400, 'unsupported_parameter', 'echo'],
    ['an unknown field', { ...ok, temprature: 0 }, 400, 'unknown_parameter', 'temprature'],
    [
      'a known field of another endpoint',
      { ...ok, max_completion_tokens: 5 },
      400,
      'unknown_parameter',
      'max_completion_tokens',
    ],
    ['frequency_penalty above 2', { ...ok, frequency_penalty: 2.5 }, 400, 'invalid_value', 'frequency_penalty'],
    ['presence_penalty below -2', { ...ok, presence_penalty: -3 }, 400, 'invalid_value', 'presence_penalty'],
    ['repetition_penalty 0', { ...ok, repetition_penalty: 0 }, 400, 'invalid_value', 'repetition_penalty'],
    ['store true', { ...ok, store: true }, 400, 'unsupported_parameter', 'store'],
  ])('completions: %s', async (_name, body, status, code, param) => {
    await expectError(await completion(body), status, code, param);
  });

  it('accepts the "off" values of unsupported OpenAI options and nulls for defaults', async () => {
    const body = await complete({
      prompt: 'Hi',
      max_tokens: 3,
      echo: false,
      logprobs: null,
      presence_penalty: 0,
      frequency_penalty: 0,
      repetition_penalty: null,
      best_of: 1,
      temperature: null,
      stop: null,
      seed: null,
      stream: false,
      lazy: null,
      user: 'u1',
      store: false,
      metadata: {},
      tool_choice: 'none',
      parallel_tool_calls: true,
      modalities: ['text'],
    });
    expect(body.usage.completion_tokens).toBeGreaterThan(0);
  });

  it('explains context_length_exceeded with the policy: prompt tokens + max_tokens <= 512', async () => {
    const err = await expectError(
      await completion({ ...ok, prompt: long.slice(0, 1500), max_tokens: 400 }),
      400,
      'context_length_exceeded',
      'prompt',
    );
    expect(err.message).toMatch(/maximum context length is 512 tokens.*\(\d+ in the prompt, 400 for the completion\)/);
  });

  it.each<[string, unknown, number, string | null, string | null]>([
    ['no messages', { model: MODEL, messages: [] }, 400, 'invalid_value', 'messages'],
    ['messages not a list', { model: MODEL, messages: 'hi' }, 400, 'invalid_type', 'messages'],
    [
      'an unknown role',
      { model: MODEL, messages: [{ role: 'tool', content: 'x' }] },
      400,
      'invalid_value',
      'messages[0].role',
    ],
    [
      'content of the wrong type',
      { model: MODEL, messages: [{ role: 'user', content: 7 }] },
      400,
      'invalid_value',
      'messages[0].content',
    ],
    [
      'a missing content',
      { model: MODEL, messages: [{ role: 'user' }] },
      400,
      'missing_required_parameter',
      'messages[0].content',
    ],
    [
      'a conversation longer than the context',
      { model: MODEL, messages: [{ role: 'user', content: long }] },
      400,
      'context_length_exceeded',
      'messages',
    ],
    [
      'max_completion_tokens beyond the context',
      { model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_completion_tokens: 9999 },
      400,
      'invalid_value',
      'max_completion_tokens',
    ],
    ['n = 3', { model: MODEL, messages: [{ role: 'user', content: 'hi' }], n: 3 }, 400, 'invalid_value', 'n'],
    [
      'tools',
      { model: MODEL, messages: [{ role: 'user', content: 'hi' }], tools: [{ type: 'function' }] },
      400,
      'unsupported_parameter',
      'tools',
    ],
    [
      'an unknown field',
      { model: MODEL, messages: [{ role: 'user', content: 'hi' }], top_a: 0.5 },
      400,
      'unknown_parameter',
      'top_a',
    ],
    [
      'repetition_penalty negative',
      { model: MODEL, messages: [{ role: 'user', content: 'hi' }], repetition_penalty: -1 },
      400,
      'invalid_value',
      'repetition_penalty',
    ],
    [
      'an unknown model',
      { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] },
      404,
      'model_not_found',
      'model',
    ],
  ])('chat: %s', async (_name, body, status, code, param) => {
    await expectError(await post('/v1/chat/completions', body), status, code, param);
  });

  it('refuses a body over the size limit with 413, with or without Content-Length', async () => {
    const big = JSON.stringify({ ...ok, prompt: 'a'.repeat(MAX_BODY_BYTES) });
    await expectError(await completion(big), 413, 'request_too_large');
    const bytes = new TextEncoder().encode(big);
    const stream = new ReadableStream<Uint8Array>({
      start(ctrl) {
        for (let i = 0; i < bytes.length; i += 65536) ctrl.enqueue(bytes.subarray(i, i + 65536));
        ctrl.close();
      },
    });
    const chunked = await worker('/v1/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: stream,
    });
    await expectError(chunked, 413, 'request_too_large');
  });

  it('answers unknown routes with 404 and wrong methods with 405 and an Allow header', async () => {
    await expectError(await worker('/v1/nothing'), 404, 'unknown_url');
    await expectError(await post('/v1/engines', {}), 404, 'unknown_url');
    await expectError(await worker('/index.html'), 404, 'unknown_url'); // / is the playground page (test/workers/playground.test.ts)
    const get = await worker('/v1/completions');
    expect(get.headers.get('allow')).toBe('POST');
    await expectError(get, 405, 'method_not_allowed');
    const put = await worker('/v1/chat/completions', { method: 'PUT', body: '{}' });
    expect(put.headers.get('allow')).toBe('POST');
    await expectError(put, 405, 'method_not_allowed');
    const del = await worker('/v1/models', { method: 'DELETE' });
    expect(del.headers.get('allow')).toBe('GET, HEAD');
    await expectError(del, 405, 'method_not_allowed');
    await expectError(await post('/healthz', {}), 405, 'method_not_allowed');
  });

  // Every method a client can send that reaches the Worker (workerd answers an unknown token such as
  // FOO with its own 501 and CONNECT with a 500, before any Worker code runs).
  it.each<[string, string]>([
    ['/', 'GET, HEAD'],
    ['/healthz', 'GET, HEAD'],
    ['/v1/models', 'GET, HEAD'],
    ['/v1/completions', 'POST'],
    ['/v1/chat/completions', 'POST'],
    ['/v1/sessions', 'POST'],
    [`/v1/sessions/sess_${'a'.repeat(32)}/messages`, 'POST'],
  ])('answers every other method on %s with a JSON 405 allowing %s', async (path, allow) => {
    const allowed = allow.split(', ');
    for (const method of ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'PROPFIND'].filter(
      (m) => !allowed.includes(m),
    )) {
      const res = await worker(path, {
        method,
        ...(method === 'GET' || method === 'TRACE'
          ? {}
          : { body: '{}', headers: { 'Content-Type': 'application/json' } }),
      });
      expect(res.headers.get('allow'), `${method} ${path}`).toBe(allow);
      const err = await expectError(res, 405, 'method_not_allowed');
      expect(err.message).toContain(`Method ${method} is not allowed on ${path}`);
    }
  });
});

describe('unexpected faults', () => {
  it('are a 500 in the same shape, logged with the cause, with no stack in the body', async () => {
    const logged = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    const init = {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'x', max_tokens: 2 }),
    };
    // A fault no code path expects: the completion id cannot be drawn.
    vi.spyOn(crypto, 'randomUUID').mockImplementation(() => {
      throw new Error('randomUUID broke');
    });
    const err = await expectError(await worker('/v1/completions', init), 500, 'internal_error');
    vi.mocked(crypto.randomUUID).mockRestore();
    expect(err.message).toBe('The server had an error while processing your request.');
    expect(logged).toHaveBeenCalledWith(
      expect.stringContaining('POST /v1/completions failed (internal_error)'),
      expect.stringMatching(/randomUUID broke[\s\S]*\n\s+at /),
    );
  });

  it('a variable set to what it cannot take is a 503 naming it, in the answer and the log', async () => {
    const logged = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    const init = {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'x', max_tokens: 2 }),
    };
    const err = await expectError(
      await withEnv({ REQUEST_BUDGET_MS: 'soon' }, '/v1/completions', init),
      503,
      'server_misconfigured',
    );
    expect(err.message).toBe('REQUEST_BUDGET_MS must be a number of milliseconds >= 0, got "soon"');
    expect(logged).toHaveBeenCalledWith(
      expect.stringContaining('POST /v1/completions failed (server_misconfigured)'),
      expect.stringMatching(/REQUEST_BUDGET_MS/),
    );
  });

  it('a model whose shards cannot be read is a 500 naming no file, and the log says which', async () => {
    const logged = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    const init = {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'no-such-model', prompt: 'x' }),
    };
    const err = await expectError(
      await withEnv({ MODEL_NAME: 'no-such-model' }, '/v1/completions', init),
      500,
      'model_unavailable',
    );
    expect(err.message).not.toMatch(/manifest/);
    expect(logged).toHaveBeenCalledWith(expect.any(String), expect.stringContaining('no-such-model/manifest.json'));
  });
});

describe('access control (API_KEYS)', () => {
  const keys = { API_KEYS: 'alpha-key, beta-key' };
  const models = (headers: Record<string, string> = {}) => withEnv(keys, '/v1/models', { headers });

  it('requires a configured bearer key on every /v1 route', async () => {
    const missing = await models();
    expect(missing.headers.get('www-authenticate')).toMatch(/^Bearer/);
    await expectError(missing, 401, 'missing_api_key');
    await expectError(await models({ Authorization: 'Bearer gamma-key' }), 401, 'invalid_api_key');
    await expectError(await models({ Authorization: 'Basic YWxwaGEta2V5' }), 401, 'invalid_api_key');
    await expectError(await models({ Authorization: 'Bearer alpha' }), 401, 'invalid_api_key');
    expect((await models({ Authorization: 'Bearer beta-key' })).status).toBe(200);
    const post = (auth: Record<string, string>) =>
      withEnv(keys, '/v1/completions', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', ...auth },
        body: JSON.stringify({ model: MODEL, prompt: 'Hi', max_tokens: 2 }),
      });
    await expectError(await post({}), 401, 'missing_api_key');
    expect((await post({ Authorization: 'Bearer alpha-key' })).status).toBe(200);
    await expectError(await withEnv(keys, '/v1/nothing'), 401, 'missing_api_key');
    await expectError(
      await withEnv(keys, '/v1/nothing', { headers: { Authorization: 'Bearer alpha-key' } }),
      404,
      'unknown_url',
    );
  });

  it('leaves /healthz open', async () => {
    expect((await withEnv(keys, '/healthz')).status).toBe(200);
  });

  it('is open when API_KEYS is unset or blank, and says so once in the log', async () => {
    resetOpenNotice();
    const warned = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
    expect((await withEnv({ API_KEYS: undefined }, '/v1/models')).status).toBe(200);
    expect((await withEnv({ API_KEYS: ' , ' }, '/v1/models')).status).toBe(200);
    expect(warned).toHaveBeenCalledTimes(1);
    expect(warned.mock.calls[0][0]).toMatch(/API_KEYS is not set.*open/);
  });

  it('tells handlers who is calling: a sha256 prefix of the key, or "anonymous"', async () => {
    const probe = new Hono<AppEnv>().use('*', requireApiKey()).get('/who', (c) => c.text(apiKeyId(c)));
    vi.spyOn(console, 'warn').mockImplementation(() => undefined);
    const who = async (apiKeys: string | undefined, auth?: string) =>
      (
        await probe.fetch(new Request('http://x/who', { headers: auth ? { Authorization: auth } : {} }), {
          ...env,
          API_KEYS: apiKeys,
        })
      ).text();
    const digest = await sha256Hex(new TextEncoder().encode('beta-key'));
    expect(await who(keys.API_KEYS, 'Bearer beta-key')).toBe(`key-${digest.slice(0, 16)}`);
    expect(await who(keys.API_KEYS, 'bearer  beta-key ')).toBe(`key-${digest.slice(0, 16)}`);
    expect(await who(undefined)).toBe('anonymous');
  });
});

import { env } from 'cloudflare:workers';
import { createExecutionContext, waitOnExecutionContext } from 'cloudflare:test';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { LoadedModel } from '../../src/engine/model.js';
import { Sampler } from '../../src/engine/sampler.js';
import { app, MAX_BODY_BYTES } from '../../src/worker/http/app.js';
import { DRAIN_CAP_BYTES } from '../../src/worker/http/body-limit.js';
import { MAX_MESSAGE_CHARS } from '../../src/worker/http/errors.js';
import { getModel } from '../../src/worker/model-store.js';
import { BASE, MODEL, post, readEvents, worker } from '../support/http.js';

/**
 * Issue #14, reproduced the way the probe found each defect: over HTTP through the Worker (the app's
 * fetch with its own execution context where a test must know when the work behind a stream ended).
 * Decode steps are counted at the classifier: every step (prefill or one decoded token) runs it once.
 */

let model: LoadedModel;
let steps = 0;
beforeAll(async () => {
  model = await getModel(env);
  for (const part of model.head) {
    const run = part.session.run.bind(part.session);
    part.session.run = (feeds) => {
      steps++;
      return run(feeds);
    };
  }
});
afterEach(() => vi.restoreAllMocks());

/** One request through the app with an execution context the test can wait on (work behind a stream). */
async function fetchWithCtx(path: string, init: RequestInit) {
  const ctx = createExecutionContext();
  const res = await app.fetch(new Request(`${BASE}${path}`, init), env, ctx);
  return { res, done: () => waitOnExecutionContext(ctx) };
}

const json = (body: unknown): RequestInit => ({
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify(body),
});

/** Reads until the first event carrying text, then hangs up. */
async function hangUpAfterFirstText(res: Response): Promise<void> {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  while (!/"(content|text)":"[^"]/.test(buf)) {
    const { done, value } = await reader.read();
    if (done) throw new Error(`stream ended before any text: ${buf}`);
    buf += value;
  }
  await reader.cancel();
}

async function newSession(messages?: unknown[]): Promise<string> {
  const res = await post('/v1/sessions', messages ? { messages } : {});
  expect(res.status).toBe(200);
  return ((await res.json()) as { id: string }).id;
}

const TURN = { max_tokens: 200, temperature: 0.8, seed: 7 };

describe('item 1: a client that hangs up a stream', () => {
  it('frees a session at once, with its state as before the abandoned turn (messages endpoint and chat with session_id)', async () => {
    const errors = vi.spyOn(console, 'error');
    const warnings = vi.spyOn(console, 'warn');
    for (const via of ['messages', 'chat'] as const) {
      const id = await newSession();
      const first = await post(`/v1/sessions/${id}/messages`, {
        content: 'Once upon a time, there was a cat.',
        max_tokens: 10,
        temperature: 0,
      });
      expect(first.status).toBe(200);
      const before = (await (await worker(`/v1/sessions/${id}`)).json()) as {
        messages: unknown[];
        stats: { tokens: number };
      };

      const turn =
        via === 'messages'
          ? fetchWithCtx(`/v1/sessions/${id}/messages`, json({ content: 'The cat saw a dog.', stream: true, ...TURN }))
          : fetchWithCtx(
              '/v1/chat/completions',
              json({
                model: MODEL,
                session_id: id,
                messages: [...before.messages, { role: 'user', content: 'The cat saw a dog.' }],
                stream: true,
                ...TURN,
              }),
            );
      const { res, done } = await turn;
      expect(res.status).toBe(200);
      await hangUpAfterFirstText(res);
      await done(); // the request's work, the object's abandoned turn included, has ended

      const after = (await (await worker(`/v1/sessions/${id}`)).json()) as typeof before;
      expect(after.messages).toEqual(before.messages);
      expect(after.stats.tokens).toBe(before.stats.tokens);
      const next = await post(`/v1/sessions/${id}/messages`, { content: 'The end.', max_tokens: 5, temperature: 0 });
      expect(next.status, await next.clone().text()).toBe(200);
      expect((await worker(`/v1/sessions/${id}`, { method: 'DELETE' })).status).toBe(200);
    }
    // item 7: hang-ups are normal events, not faults
    expect(errors).not.toHaveBeenCalled();
    expect(warnings.mock.calls.filter(([m]) => !String(m).includes('API_KEYS'))).toEqual([]);
  });

  it('stops the generation within a token or two, stateless and in a session', async () => {
    const errors = vi.spyOn(console, 'error');
    const id = await newSession();
    for (const [path, body] of [
      ['/v1/completions', { model: MODEL, prompt: 'Once upon a time', stream: true, ...TURN }],
      [
        '/v1/chat/completions',
        { model: MODEL, messages: [{ role: 'user', content: 'Tell me a story.' }], stream: true, ...TURN },
      ],
      ['/v1/completions', { model: MODEL, prompt: 'Once upon a time', stream: true, stop: ['qqqqqqqq'], ...TURN }],
      [`/v1/sessions/${id}/messages`, { content: 'Tell me a story.', stream: true, ...TURN }],
    ] as const) {
      const { res, done } = await fetchWithCtx(path, json(body));
      await hangUpAfterFirstText(res);
      const atHangUp = steps;
      await done();
      expect(steps - atHangUp, path).toBeLessThanOrEqual(2);
    }
    expect(errors).not.toHaveBeenCalled();
  });
});

describe('item 2: a streamed generation yields to other requests between tokens', () => {
  it('/healthz answers while a stream runs, not after it', async () => {
    const { res, done } = await fetchWithCtx(
      '/v1/completions',
      json({ model: MODEL, prompt: 'Once upon a time', ...TURN, stream: true }),
    );
    const stream = readEvents(res);
    const atStart = steps;
    const health = await worker('/healthz');
    const atHealth = steps;
    expect(health.status).toBe(200);
    const { events } = await stream;
    await done();
    const final = JSON.parse(events.at(-2)!) as { usage?: unknown; choices: { finish_reason: string }[] };
    expect(final.choices[0].finish_reason).toBe('length'); // 200 tokens were generated
    expect(atHealth - atStart).toBeLessThan(10); // a few tokens, not the 200 of the stream
  });

  it('a second streamed turn or a DELETE on a streaming session gets 409 at once instead of queueing', async () => {
    const id = await newSession();
    const { res, done } = await fetchWithCtx(
      `/v1/sessions/${id}/messages`,
      json({ content: 'Tell me a story.', stream: true, ...TURN }),
    );
    const stream = readEvents(res);
    const atStart = steps;
    const second = await post(`/v1/sessions/${id}/messages`, { content: 'And another.', stream: true, max_tokens: 10 });
    const del = await worker(`/v1/sessions/${id}`, { method: 'DELETE' });
    const atAnswers = steps;
    expect(second.status).toBe(409);
    expect(((await second.json()) as { error: { code: string } }).error.code).toBe('session_busy');
    expect(del.status).toBe(409);
    await del.body?.cancel();
    expect(atAnswers - atStart).toBeLessThan(20);
    expect((await stream).events.at(-1)).toBe('[DONE]');
    await done();
    expect((await worker(`/v1/sessions/${id}`, { method: 'DELETE' })).status).toBe(200);
  });
});

describe('item 3: an oversized chunked upload', () => {
  it('gets 413 once its body has been read to its end, and the next request is answered', async () => {
    let pulled = 0;
    const chunk = new TextEncoder().encode('a'.repeat(16384));
    const body = new ReadableStream<Uint8Array>({
      pull(ctrl) {
        pulled += chunk.length;
        ctrl.enqueue(chunk);
        if (pulled >= 400_000) ctrl.close();
      },
    });
    const res = await worker('/v1/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body,
    });
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('request_too_large');
    // Read to its end (issue 26: stopping mid-body broke the next request in workerd).
    expect(pulled).toBeGreaterThanOrEqual(400_000);
    expect((await worker('/healthz')).status).toBe(200);
  });

  it('an endless one is read only up to the drain cap, and still gets 413', async () => {
    let pulled = 0;
    const chunk = new Uint8Array(65536).fill(97);
    const body = new ReadableStream<Uint8Array>({
      pull(ctrl) {
        pulled += chunk.length;
        ctrl.enqueue(chunk);
      },
    });
    const res = await worker('/v1/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body,
    });
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('request_too_large');
    expect(pulled).toBeGreaterThan(DRAIN_CAP_BYTES);
    expect(pulled).toBeLessThan(DRAIN_CAP_BYTES + MAX_BODY_BYTES + 4 * chunk.length);
  });
});

describe('item 4: a tiny temperature', () => {
  it('1e-38 and 1e-45 decode as greedy (their limit), not one token repeated', async () => {
    const req = { model: MODEL, prompt: 'Once upon a time', max_tokens: 30, seed: 3 };
    const greedy = (await (await post('/v1/completions', { ...req, temperature: 0 })).json()) as {
      choices: { text: string }[];
    };
    for (const temperature of [1e-38, 1e-45]) {
      const res = await post('/v1/completions', { ...req, temperature });
      expect(res.status).toBe(200);
      expect(((await res.json()) as typeof greedy).choices[0].text).toBe(greedy.choices[0].text);
    }
    const logits = Float32Array.from([1, 5, -3, 2]);
    expect(new Sampler({ temperature: 1e-38, topP: 0.9, topK: 0, seed: 1 }).sample(logits)).toBe(1);
  });
});

describe('item 5: POST /v1/sessions with initial messages longer than the context', () => {
  it('is refused with context_length_exceeded', async () => {
    const res = await post('/v1/sessions', {
      messages: [{ role: 'system', content: 'Once upon a time there was a dog. '.repeat(200) }],
    });
    expect(res.status).toBe(400);
    const { error } = (await res.json()) as { error: { code: string; param: string; message: string } };
    expect(error.code).toBe('context_length_exceeded');
    expect(error.param).toBe('messages');
    expect(error.message).toMatch(/maximum context length is 512 tokens/);
  });
});

describe('item 6: a missing prompt', () => {
  it('is missing_required_parameter', async () => {
    const res = await post('/v1/completions', { model: MODEL });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: object }).error).toMatchObject({
      code: 'missing_required_parameter',
      param: 'prompt',
    });
  });
});

describe('item 8: content types and echoed input', () => {
  it('answers 415 to a POST whose body is not declared JSON', async () => {
    const body = JSON.stringify({ model: MODEL, prompt: 'Hi', max_tokens: 2 });
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', null]) {
      const res = await worker('/v1/completions', {
        method: 'POST',
        headers: type ? { 'Content-Type': type } : {},
        body: new TextEncoder().encode(body),
      });
      expect(res.status, String(type)).toBe(415);
      expect(((await res.json()) as { error: object }).error).toMatchObject({
        code: 'unsupported_media_type',
        type: 'invalid_request_error',
      });
    }
    expect(
      (
        await worker('/v1/completions', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json; charset=utf-8' },
          body,
        })
      ).status,
    ).toBe(200);
    expect((await worker('/v1/sessions', { method: 'POST' })).status).toBe(200); // no body, no type needed
  });

  it('caps what an error message echoes', async () => {
    const res = await post('/v1/completions', {
      model: MODEL,
      prompt: 'Hi',
      lazy: { schedule: `bos,${'1:0.5,'.repeat(40_000)}` },
    });
    expect(res.status).toBe(400);
    const text = await res.text();
    expect(text.length).toBeLessThan(MAX_MESSAGE_CHARS + 300);
    expect((JSON.parse(text) as { error: { code: string } }).error.code).toBe('invalid_schedule');
    const name = await post('/v1/completions', { model: 'm'.repeat(100_000), prompt: 'Hi' });
    expect(name.status).toBe(404);
    expect((await name.text()).length).toBeLessThan(MAX_MESSAGE_CHARS + 300);
  });
});

describe('item 9: stream_options.include_usage', () => {
  it('puts "usage": null in every chunk before the usage chunk (completions, chat, sessions)', async () => {
    const id = await newSession();
    for (const [path, body] of [
      ['/v1/completions', { model: MODEL, prompt: 'Hi', max_tokens: 8 }],
      ['/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 8 }],
      [`/v1/sessions/${id}/messages`, { content: 'Hi', max_tokens: 8 }],
    ] as const) {
      const res = await post(path, { ...body, stream: true, stream_options: { include_usage: true } });
      const chunks = (await readEvents(res)).events
        .slice(0, -1)
        .map((e) => JSON.parse(e) as { usage: unknown; choices: unknown[] });
      const last = chunks.pop()!;
      expect(last.choices).toEqual([]);
      expect(last.usage).toMatchObject({ completion_tokens: expect.any(Number) });
      expect(chunks.length).toBeGreaterThan(1);
      for (const ch of chunks) expect(ch).toHaveProperty('usage', null);
    }
    const plain = (
      await readEvents(await post('/v1/completions', { model: MODEL, prompt: 'Hi', max_tokens: 4, stream: true }))
    ).events;
    expect(JSON.parse(plain[0])).not.toHaveProperty('usage');
  });
});

import { exports } from 'cloudflare:workers';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { MODEL } from '../support/http.js';

/**
 * The official openai SDK, unchanged, pointed at the Worker: its `fetch` option routes every
 * request into the Worker's entrypoint instead of the network.
 */
const client = new OpenAI({
  apiKey: 'not-needed-on-an-open-server',
  baseURL: 'http://localhost/v1',
  maxRetries: 0,
  fetch: (url: string | URL | Request, init?: RequestInit) => exports.default.fetch(new Request(url, init)),
});

describe('the openai SDK against the Worker', () => {
  it('lists models', async () => {
    const page = await client.models.list();
    expect(page.data.map((m) => m.id)).toEqual([MODEL]);
    expect((await client.models.retrieve(MODEL)).id).toBe(MODEL);
  });

  it('creates completions, with the lazy extension passed through', async () => {
    const r = await client.completions.create({
      model: MODEL,
      prompt: 'Once upon a time',
      max_tokens: 24,
      temperature: 0,
      stop: ['zzz'],
    });
    expect(r.object).toBe('text_completion');
    expect(r.choices[0].text).toMatch(/^, there was a little/);
    expect(r.choices[0].finish_reason).toBe('length');
    expect(r.usage).toEqual({
      prompt_tokens: 5,
      completion_tokens: 24,
      total_tokens: 29,
      prompt_tokens_details: { cached_tokens: 0 },
    });
    const dense = await client.completions.create({
      model: MODEL,
      prompt: 'Once upon a time',
      max_tokens: 24,
      temperature: 0,
      lazy: { enabled: false },
    } as OpenAI.CompletionCreateParamsNonStreaming);
    expect((dense as unknown as { lazy_stats: { schedule: string } }).lazy_stats.schedule).toBe('dense');
  });

  it('streams completions; the pieces add up to the non-streamed text', async () => {
    const req = { model: MODEL, prompt: 'Sue found a', max_tokens: 48, temperature: 0.9, top_p: 0.9, seed: 77 };
    const whole = await client.completions.create(req);
    const stream = await client.completions.create({ ...req, stream: true });
    const pieces: string[] = [];
    let finish: string | null = null;
    for await (const chunk of stream) {
      pieces.push(chunk.choices[0].text);
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    expect(pieces.length).toBeGreaterThan(5);
    expect(pieces.join('')).toBe(whole.choices[0].text);
    expect(finish).toBe(whole.choices[0].finish_reason);
  });

  it('creates chat completions, streamed and not', async () => {
    const req = {
      model: MODEL,
      messages: [{ role: 'user' as const, content: 'Once upon a time there was a cat named Tom.' }],
      max_tokens: 40,
      temperature: 0.7,
      seed: 5,
    };
    const whole = await client.chat.completions.create(req);
    expect(whole.object).toBe('chat.completion');
    expect(whole.choices[0].message.role).toBe('assistant');
    expect(whole.choices[0].message.content!.length).toBeGreaterThan(0);
    const stream = await client.chat.completions.create({
      ...req,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      usage = chunk.usage ?? usage;
    }
    expect(text).toBe(whole.choices[0].message.content);
    expect(usage).toEqual(whole.usage);
  });

  it("raises the SDK's typed errors from OpenAI-shaped error bodies", async () => {
    const e1 = await client.completions.create({ model: 'gpt-4o', prompt: 'x' }).catch((e: unknown) => e);
    expect(e1).toBeInstanceOf(OpenAI.NotFoundError);
    expect((e1 as InstanceType<typeof OpenAI.NotFoundError>).code).toBe('model_not_found');
    const e2 = await client.completions.create({ model: MODEL, prompt: 'x', n: 2 }).catch((e: unknown) => e);
    expect(e2).toBeInstanceOf(OpenAI.BadRequestError);
    expect((e2 as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('n');
  });
});

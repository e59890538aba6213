/**
 * The served default, SmolLM2-135M-Instruct, through the Worker in workerd as wrangler.toml configures
 * it (with the memory budget npm start sets for local use): chat, completions, the openai SDK and
 * sessions. Greedy replies are checked against the exact-weights reference (scripts/reference/).
 */
import { exports } from 'cloudflare:workers';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import chat from '../fixtures/smollm2/chat-greedy.json';
import { MODEL, post, worker } from '../support/http.js';

const client = new OpenAI({
  apiKey: 'unused',
  baseURL: 'http://localhost/v1',
  maxRetries: 0,
  fetch: (url: string | URL | Request, init?: RequestInit) => exports.default.fetch(new Request(url, init)),
});

// Prompts whose exact reply has no near-tie: any faithful engine gives exactly this text.
const france = chat.prompts.find((p) => p.messages[0].content === 'What is the capital of France?')!;
const clear = chat.prompts.filter((p) => p.first_near_tie === null);

describe('SmolLM2 served by the Worker', () => {
  it('is the default model; /healthz states the budget, the estimate, the measured heap and the 128 MB of a deployed isolate', async () => {
    expect(MODEL).toBe('smollm2-135m-instruct');
    const h = (await (await worker('/healthz')).json()) as { status: string; memory: Record<string, unknown> };
    expect(h.status).toBe('ok');
    expect(h.memory).toMatchObject({
      budget_mb: 1024,
      deployed_isolate_mb: 128,
      fits_deployed_isolate: false,
      context_tokens: 2048,
    });
    const est = h.memory.estimate_mb as Record<string, number>;
    expect(est.total).toBeGreaterThan(128);
    expect(est.kv_cache).toBeCloseTo((30 * 2 * 2048 * 192 * 4) / 2 ** 20, 0);
    expect(h.memory.measured_wasm_heap_mb).toBeGreaterThan(est.weights);
    const models = (await (await worker('/v1/models')).json()) as {
      data: Array<{ id: string; context_length: number }>;
    };
    expect(models.data[0]).toMatchObject({ id: MODEL, context_length: 2048 });
  });

  it("answers chat with the exact reference's greedy reply, stopping at <|im_end|>", async () => {
    expect(france.first_near_tie).toBeNull();
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: france.messages as OpenAI.ChatCompletionMessageParam[],
      max_tokens: 40,
      temperature: 0,
    });
    expect(r.choices[0].message.content).toBe(france.exact.text.replace('<|im_end|>', ''));
    expect(r.choices[0].finish_reason).toBe('stop');
    expect(r.usage?.prompt_tokens).toBe(france.prompt_ids.length);
  });

  it('streams through the openai SDK: the pieces add up to the non-streamed reply', async () => {
    const p = clear[1] ?? clear[0];
    const req = {
      model: MODEL,
      messages: p.messages as OpenAI.ChatCompletionMessageParam[],
      max_tokens: 24,
      temperature: 0,
    };
    const whole = await client.chat.completions.create(req);
    const stream = await client.chat.completions.create({ ...req, stream: true });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    expect(text).toBe(whole.choices[0].message.content);
    expect(text.length).toBeGreaterThan(0);
  });

  it('completes raw text without BOS (the file says add_bos_token false)', async () => {
    const r = (await (
      await post('/v1/completions', { model: MODEL, prompt: 'The capital of France is', max_tokens: 1, temperature: 0 })
    ).json()) as {
      choices: Array<{ text: string }>;
      usage: { prompt_tokens: number };
    };
    expect(r.choices[0].text).toBe(' Paris');
    expect(r.usage.prompt_tokens).toBe(5);
  });

  it('keeps a session: the reply equals stateless chat, and the next turn reuses the cached history', async () => {
    const s = (await (await post('/v1/sessions', {})).json()) as { id: string };
    const first = (await (
      await post(`/v1/sessions/${s.id}/messages`, {
        content: france.messages[0].content,
        max_tokens: 40,
        temperature: 0,
      })
    ).json()) as {
      choices: Array<{ message: { content: string } }>;
    };
    expect(first.choices[0].message.content).toBe(france.exact.text.replace('<|im_end|>', ''));
    const second = (await (
      await post(`/v1/sessions/${s.id}/messages`, { content: 'And of Italy?', max_tokens: 16, temperature: 0 })
    ).json()) as {
      usage: { prompt_tokens_details: { cached_tokens: number } };
      session: { stats: { reused_tokens: number } };
    };
    expect(second.usage.prompt_tokens_details.cached_tokens).toBeGreaterThanOrEqual(france.prompt_ids.length);
    expect(second.session.stats.reused_tokens).toBe(second.usage.prompt_tokens_details.cached_tokens);
  });
});

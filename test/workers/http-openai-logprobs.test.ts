import { env, exports } from 'cloudflare:workers';
import OpenAI from 'openai';
import { beforeAll, describe, expect, it } from 'vitest';
import type { LoadedModel } from '../../src/engine/model.js';
import { getModel } from '../../src/worker/model-store.js';
import { MODEL, post } from '../support/http.js';

/**
 * Issue 14, item 10, through the official openai SDK (pointed at the Worker as in
 * http-openai-sdk.test.ts): logprobs for chat and completions (streamed too), usage's
 * prompt_tokens_details.cached_tokens on every response, and prompts given as token ids.
 */
const client = new OpenAI({
  apiKey: 'not-needed-on-an-open-server',
  baseURL: 'http://localhost/v1',
  maxRetries: 0,
  fetch: (url: string | URL | Request, init?: RequestInit) => exports.default.fetch(new Request(url, init)),
});

type TokenLogprob = OpenAI.Chat.Completions.ChatCompletionTokenLogprob;
const utf8 = (s: string) => Array.from(new TextEncoder().encode(s));
const DENSE = { lazy: { enabled: false } } as object;
const STORY = 'Once upon a time, there was a little girl named Lily.';

let model: LoadedModel;
beforeAll(async () => {
  model = await getModel(env);
});

/** What must hold of every token's logprobs, whatever the sampling. */
function checkToken(t: TokenLogprob, top: number) {
  expect(t.logprob).toBeLessThanOrEqual(0);
  expect(t.bytes).toEqual(utf8(t.token));
  expect(t.top_logprobs).toHaveLength(top);
  for (let k = 0; k < t.top_logprobs.length; k++) {
    const a = t.top_logprobs[k];
    expect(a.logprob).toBeLessThanOrEqual(0);
    expect(a.bytes).toEqual(utf8(a.token));
    if (k > 0) expect(a.logprob).toBeLessThanOrEqual(t.top_logprobs[k - 1].logprob);
  }
  expect(t.top_logprobs.reduce((s, a) => s + Math.exp(a.logprob), 0)).toBeLessThanOrEqual(1 + 1e-9);
  // the token itself is at most as likely as the most likely one, and where it is listed it has its own value
  if (top > 0) expect(t.logprob).toBeLessThanOrEqual(t.top_logprobs[0].logprob);
  const self = t.top_logprobs.find((a) => a.token === t.token);
  if (self) expect(self.logprob).toBeCloseTo(t.logprob, 12);
}

describe('logprobs through the openai SDK', () => {
  it('chat: greedy tokens are their own top-1, with one entry per completion token that spells the content', async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: STORY }],
      max_tokens: 30,
      temperature: 0,
      logprobs: true,
      top_logprobs: 5,
    });
    const content = r.choices[0].logprobs!.content!;
    expect(content).toHaveLength(r.usage!.completion_tokens);
    expect(content.map((t) => t.token).join('')).toBe(r.choices[0].message.content);
    expect(r.choices[0].logprobs!.refusal).toBeNull();
    for (const t of content) {
      checkToken(t, 5);
      expect(t.top_logprobs[0].token).toBe(t.token);
      expect(t.top_logprobs[0].logprob).toBe(t.logprob);
    }
    // stories260K is confident about a story's next words: not all mass is spread thin
    expect(Math.max(...content.map((t) => t.logprob))).toBeGreaterThan(Math.log(0.5));
  });

  it("chat: the values are the model's log-softmax, the same as a prefill of the text so far gives (dense)", async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: STORY }],
      max_tokens: 12,
      temperature: 0.9,
      seed: 3,
      logprobs: true,
      top_logprobs: 3,
      ...DENSE,
    });
    const content = r.choices[0].logprobs!.content!;
    content.forEach((t) => checkToken(t, 3));
    // Teacher forcing: the prompt's ids plus the first k generated ids as a token-id prompt; its first
    // token's logprobs (computed by a prefill, not by decode steps) are those of token k.
    const prompt = model.tokenizer.encode(`${STORY}\n`, { bos: true });
    const ids = model.tokenizer.encode(`${STORY}\n${r.choices[0].message.content}`, { bos: true });
    expect(ids.slice(0, prompt.length)).toEqual(prompt);
    for (const k of [0, 4, 9]) {
      const forced = await client.completions.create({
        model: MODEL,
        prompt: ids.slice(0, prompt.length + k),
        max_tokens: 1,
        temperature: 0,
        logprobs: 3,
        ...DENSE,
      });
      const lp = forced.choices[0].logprobs!;
      const top = Object.entries(lp.top_logprobs![0]);
      expect(top.map(([tok]) => tok)).toEqual(content[k].top_logprobs.map((a) => a.token));
      top.forEach(([, v], j) => expect(v).toBeCloseTo(content[k].top_logprobs[j].logprob, 3));
    }
  });

  it('chat: streamed chunks carry the logprobs of their own tokens; together they are the non-streamed ones', async () => {
    const req = {
      model: MODEL,
      messages: [{ role: 'user' as const, content: STORY }],
      max_tokens: 40,
      temperature: 0.8,
      seed: 11,
      logprobs: true,
      top_logprobs: 2,
    };
    const whole = await client.chat.completions.create(req);
    const stream = await client.chat.completions.create({ ...req, stream: true });
    const all: TokenLogprob[] = [];
    let chunks = 0;
    for await (const chunk of stream) {
      const c = chunk.choices[0];
      if (!c?.logprobs?.content) continue;
      chunks++;
      expect(c.logprobs.content.map((t) => t.token).join('')).toBe(c.delta.content);
      all.push(...c.logprobs.content);
    }
    expect(chunks).toBeGreaterThan(5);
    expect(all).toEqual(whole.choices[0].logprobs!.content);
  });

  it('chat: without logprobs there are none; top_logprobs needs logprobs and is at most 20', async () => {
    const plain = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: 3,
      logprobs: false,
      top_logprobs: 0,
    });
    expect(plain.choices[0].logprobs).toBeNull();
    for (const [body, param] of [
      [{ top_logprobs: 2 }, 'top_logprobs'],
      [{ logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
    ] as const) {
      const e = await client.chat.completions
        .create({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 3, ...body })
        .catch((x: unknown) => x);
      expect(e).toBeInstanceOf(OpenAI.BadRequestError);
      expect((e as InstanceType<typeof OpenAI.BadRequestError>).code).toBe('invalid_value');
      expect((e as InstanceType<typeof OpenAI.BadRequestError>).param).toBe(param);
    }
  });

  it('completions: the legacy shape, with text offsets into the text and the sampled token among top_logprobs', async () => {
    const r = await client.completions.create({
      model: MODEL,
      prompt: 'Once upon a time',
      max_tokens: 24,
      temperature: 1,
      seed: 9,
      logprobs: 2,
    });
    const text = r.choices[0].text;
    const lp = r.choices[0].logprobs!;
    const n = r.usage!.completion_tokens;
    expect(lp.tokens).toHaveLength(n);
    expect(lp.token_logprobs).toHaveLength(n);
    expect(lp.top_logprobs).toHaveLength(n);
    expect(lp.text_offset).toHaveLength(n);
    expect(lp.tokens!.join('')).toBe(text);
    lp.tokens!.forEach((tok, i) => {
      expect(lp.text_offset![i]).toBe(lp.tokens!.slice(0, i).join('').length);
      expect(text.slice(lp.text_offset![i], lp.text_offset![i] + tok.length)).toBe(tok);
      expect(lp.token_logprobs![i]).toBeLessThanOrEqual(0);
      const top = lp.top_logprobs![i];
      // the 2 most likely, plus the sampled token when it is not one of them
      expect(Object.keys(top).length).toBeGreaterThanOrEqual(2);
      expect(Object.keys(top).length).toBeLessThanOrEqual(3);
      expect(top[tok]).toBeCloseTo(lp.token_logprobs![i], 12);
      expect(Object.values(top).reduce((s, v) => s + Math.exp(v), 0)).toBeLessThanOrEqual(1 + 1e-9);
    });
    // at temperature 1 some token is not the most likely one: sampling, not argmax
    expect(lp.tokens!.some((tok, i) => Math.max(...Object.values(lp.top_logprobs![i])) > lp.token_logprobs![i])).toBe(
      true,
    );
  });

  it('completions: logprobs 0 gives the sampled token only; streamed chunks add up to the whole', async () => {
    const req = { model: MODEL, prompt: 'Sue found a', max_tokens: 32, temperature: 0, logprobs: 0 };
    const whole = await client.completions.create(req);
    const lp = whole.choices[0].logprobs!;
    lp.top_logprobs!.forEach((top, i) => expect(top).toEqual({ [lp.tokens![i]]: lp.token_logprobs![i] }));
    const stream = await client.completions.create({ ...req, stream: true });
    const got = {
      tokens: [] as string[],
      token_logprobs: [] as number[],
      top_logprobs: [] as Record<string, number>[],
      text_offset: [] as number[],
    };
    for await (const chunk of stream) {
      const c = chunk.choices[0]?.logprobs;
      if (!c) continue;
      expect(c.tokens!.join('')).toBe(chunk.choices[0].text);
      got.tokens.push(...c.tokens!);
      got.token_logprobs.push(...c.token_logprobs!);
      got.top_logprobs.push(...c.top_logprobs!);
      got.text_offset.push(...c.text_offset!);
    }
    expect(got).toEqual(lp);
  });

  it('completions: with a stop string held back and then hit, every completion token still gets its logprobs once', async () => {
    const req = {
      model: MODEL,
      prompt: 'Once upon a time',
      max_tokens: 40,
      temperature: 0,
      logprobs: 1,
      stop: [' named'],
    };
    const whole = await client.completions.create(req);
    const lp = whole.choices[0].logprobs!;
    expect(whole.choices[0].text).toBe(', there was a little girl');
    expect(whole.choices[0].finish_reason).toBe('stop');
    // one entry per completion token, the one that completed the stop string included (its text is cut)
    expect(lp.tokens).toHaveLength(whole.usage!.completion_tokens);
    expect(lp.tokens!.join('')).toBe(`${whole.choices[0].text} named`);
    const stream = await client.completions.create({ ...req, stream: true });
    const tokens: string[] = [];
    let text = '';
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? '';
      tokens.push(...(chunk.choices[0]?.logprobs?.tokens ?? []));
    }
    expect(text).toBe(whole.choices[0].text);
    expect(tokens).toEqual(lp.tokens);
  });

  it("completions: logprobs must be 0..5, and top_logprobs is chat's option", async () => {
    for (const [body, param] of [
      [{ logprobs: 6 }, 'logprobs'],
      [{ top_logprobs: 3 }, 'top_logprobs'],
    ] as const) {
      const e = await client.completions
        .create({ model: MODEL, prompt: 'Hi', max_tokens: 2, ...body } as OpenAI.CompletionCreateParamsNonStreaming)
        .catch((x: unknown) => x);
      expect(e).toBeInstanceOf(OpenAI.BadRequestError);
      expect((e as InstanceType<typeof OpenAI.BadRequestError>).code).toBe('invalid_value');
      expect((e as InstanceType<typeof OpenAI.BadRequestError>).param).toBe(param);
    }
  });

  it('session turns give logprobs too, streamed or not', async () => {
    const { id } = (await (await post('/v1/sessions', {})).json()) as { id: string };
    const turn = await post(`/v1/sessions/${id}/messages`, {
      content: STORY,
      max_tokens: 10,
      temperature: 0,
      logprobs: true,
      top_logprobs: 1,
    });
    expect(turn.status).toBe(200);
    const body = (await turn.json()) as OpenAI.Chat.ChatCompletion;
    const content = body.choices[0].logprobs!.content!;
    expect(content).toHaveLength(body.usage!.completion_tokens);
    content.forEach((t) => {
      checkToken(t, 1);
      expect(t.top_logprobs[0].logprob).toBe(t.logprob);
    });
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [
        { role: 'user', content: STORY },
        { role: 'assistant', content: body.choices[0].message.content! },
        { role: 'user', content: 'Lily ran.' },
      ],
      max_tokens: 10,
      temperature: 0,
      logprobs: true,
      stream: true,
      stream_options: { include_usage: true },
      session_id: id,
    } as OpenAI.Chat.ChatCompletionCreateParamsStreaming);
    const streamed: TokenLogprob[] = [];
    let text = '';
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
      usage = chunk.usage ?? usage;
    }
    expect(streamed.map((t) => t.token).join('')).toBe(text);
    expect(streamed).toHaveLength(usage!.completion_tokens);
    streamed.forEach((t) => checkToken(t, 0));
    expect(usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThan(0);
  });
});

describe('usage.prompt_tokens_details.cached_tokens on every response', () => {
  it('is 0 on stateless completions and chat, streamed or not', async () => {
    const c = await client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 4 });
    expect(c.usage).toEqual({
      prompt_tokens: 5,
      completion_tokens: 4,
      total_tokens: 9,
      prompt_tokens_details: { cached_tokens: 0 },
    });
    const ch = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: 4,
    });
    expect(ch.usage!.prompt_tokens_details).toEqual({ cached_tokens: 0 });
    for (const stream of [
      await client.completions.create({
        model: MODEL,
        prompt: 'Hi',
        max_tokens: 4,
        stream: true,
        stream_options: { include_usage: true },
      }),
      await client.chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: 'Hi' }],
        max_tokens: 4,
        stream: true,
        stream_options: { include_usage: true },
      }),
    ]) {
      let usage: OpenAI.CompletionUsage | null | undefined;
      for await (const chunk of stream) usage = chunk.usage ?? usage;
      expect(usage!.prompt_tokens_details).toEqual({ cached_tokens: 0 });
    }
  });
});

describe('prompts as token ids on /v1/completions', () => {
  it('gives the same completion as the text the ids encode, as given (no BOS added)', async () => {
    const ids = model.tokenizer.encode('Once upon a time', { bos: true });
    expect(ids[0]).toBe(model.tokenizer.bosId);
    const opts = { model: MODEL, max_tokens: 24, temperature: 0.7, seed: 21 };
    const fromText = await client.completions.create({ ...opts, prompt: 'Once upon a time' });
    const fromIds = await client.completions.create({ ...opts, prompt: ids });
    const fromList = await client.completions.create({ ...opts, prompt: [ids] });
    expect(fromIds.choices[0].text).toBe(fromText.choices[0].text);
    expect(fromList.choices[0].text).toBe(fromText.choices[0].text);
    expect(fromIds.usage).toEqual(fromText.usage);
    const noBos = await client.completions.create({ ...opts, prompt: ids.slice(1) });
    expect(noBos.usage!.prompt_tokens).toBe(ids.length - 1);
  });

  it('refuses ids outside the vocabulary with invalid_value naming the id', async () => {
    const V = model.tokenizer.vocabSize;
    for (const [prompt, param, shown] of [
      [[1, 2, V], 'prompt[2]', String(V)],
      [[[1, -1]], 'prompt[0][1]', '-1'],
      [[1, 2.5], 'prompt[1]', '2.5'],
    ] as const) {
      const e = await client.completions
        .create({ model: MODEL, prompt: prompt as unknown as number[], max_tokens: 2 })
        .catch((x: unknown) => x);
      expect(e).toBeInstanceOf(OpenAI.BadRequestError);
      const err = e as InstanceType<typeof OpenAI.BadRequestError>;
      expect(err.code).toBe('invalid_value');
      expect(err.param).toBe(param);
      expect(err.message).toContain(`${shown} is not a token id`);
    }
    const empty = await client.completions.create({ model: MODEL, prompt: [], max_tokens: 2 }).catch((x: unknown) => x);
    expect((empty as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('prompt');
  });
});

import { describe, expect, it } from 'vitest';
import { MODEL, readEvents, withEnv } from '../support/http.js';

/**
 * The prefix cache of stateless requests over HTTP in workerd (src/worker/job/prefix-cache.ts). The
 * workers project runs with PREFIX_CACHE_MB 0 (vitest.config.ts: the other tests pin fresh
 * computations), so these requests turn it on as a deployment would.
 */
const ON = { PREFIX_CACHE_MB: '64' };

interface Reply {
  choices: { text?: string; message?: { content: string } }[];
  usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
  lazy_stats: {
    revived: number;
    revived_per_layer: number[];
    computed_per_layer: number[];
    prefix_cache?: { entries: number; bytes: number };
  };
}

const send = (env: Partial<Cloudflare.Env>, path: string, body: object) =>
  withEnv(env, path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: MODEL, ...body }),
  });

async function ok(env: Partial<Cloudflare.Env>, path: string, body: object): Promise<Reply> {
  const res = await send(env, path, body);
  const text = await res.text();
  expect(res.status, text).toBe(200);
  return JSON.parse(text) as Reply;
}

const story =
  'Once upon a time, there was a little girl named Lily. She loved to play in the park with her big red ball. ' +
  'One day, she saw a small dog sitting under a tree. The dog was sad because it had lost its way home. ' +
  'Lily wanted to help the dog find its family.';
const sum = (a: number[]) => a.reduce((t, x) => t + x, 0);
const text = (r: Reply) => r.choices[0].text ?? r.choices[0].message!.content;

describe('the prefix cache over HTTP (stateless requests)', () => {
  it('a second chat request over the same document reports the reused prefix and answers as a request computed fresh', async () => {
    const ask = (q: string) => ({
      messages: [{ role: 'user', content: `${story}\n\n${q}` }],
      max_tokens: 24,
      temperature: 0,
      lazy: { enabled: false },
    });
    const first = await ok(ON, '/v1/chat/completions', ask('Who found the dog?'));
    expect(first.usage.prompt_tokens_details.cached_tokens).toBe(0);
    const second = await ok(ON, '/v1/chat/completions', ask('What did Lily love?'));
    const cached = second.usage.prompt_tokens_details.cached_tokens;
    expect(cached).toBeGreaterThan(40);
    expect(cached).toBeLessThan(second.usage.prompt_tokens);
    // Only the new tokens were computed: the rest of the prompt and the decode steps.
    const decodeSteps = second.lazy_stats.computed_per_layer[0] - (second.usage.prompt_tokens - cached);
    expect(decodeSteps).toBeGreaterThanOrEqual(0);
    expect(decodeSteps).toBeLessThan(24);
    expect(second.lazy_stats.prefix_cache!.entries).toBeGreaterThan(0);
    expect(second.lazy_stats.prefix_cache!.bytes).toBeGreaterThan(0);
    const alone = await ok(ON, '/v1/chat/completions', { ...ask('What did Lily love?'), cache_prompt: false });
    expect(alone.usage.prompt_tokens_details.cached_tokens).toBe(0);
    expect(alone.lazy_stats.prefix_cache).toBeUndefined();
    expect(text(second)).toBe(text(alone));
  });

  it('streamed completions: the usage chunk reports the reused prefix, and the text is the fresh request’s', async () => {
    const body = (end: string) => ({
      prompt: `${story} ${end}`,
      max_tokens: 20,
      temperature: 0,
      lazy: { enabled: false },
      stream: true,
      stream_options: { include_usage: true },
    });
    const read = async (env: Partial<Cloudflare.Env>, b: object) => {
      const res = await send(env, '/v1/completions', b);
      expect(res.status).toBe(200);
      const events = (await readEvents(res)).events.filter((e) => e !== '[DONE]').map((e) => JSON.parse(e) as Reply);
      return {
        text: events.map((e) => e.choices[0]?.text ?? '').join(''),
        usage: events.at(-1)!.usage,
      };
    };
    await read(ON, body('The dog'));
    const second = await read(ON, body('Then Lily'));
    expect(second.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(40);
    const fresh = await read(ON, { ...body('Then Lily'), cache_prompt: false });
    expect(fresh.usage.prompt_tokens_details.cached_tokens).toBe(0);
    expect(second.text).toBe(fresh.text);
  });

  it('lazy: lazy_stats says how many tokens the request revived, and at which layers', async () => {
    const body = (end: string) => ({ prompt: `${story} ${story} ${end}`, max_tokens: 16, temperature: 0 });
    await ok(ON, '/v1/completions', body('The dog'));
    const second = await ok(ON, '/v1/completions', body('Then Lily said'));
    expect(second.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(80);
    const perLayer = second.lazy_stats.revived_per_layer;
    expect(perLayer).toHaveLength(second.lazy_stats.computed_per_layer.length);
    expect(perLayer.reduce((a, b) => a + b, 0)).toBe(second.lazy_stats.revived);
  });

  it('PREFIX_CACHE_MB 0 turns it off for the server', async () => {
    const body = { prompt: `${story} The end`, max_tokens: 4, temperature: 0 };
    for (let k = 0; k < 2; k++) {
      const r = await ok({ PREFIX_CACHE_MB: '0' }, '/v1/completions', body);
      expect(r.usage.prompt_tokens_details.cached_tokens).toBe(0);
      expect(r.lazy_stats.prefix_cache).toBeUndefined();
    }
  });

  it('refuses a cache_prompt that is not a boolean, and cache_prompt false with a session', async () => {
    const bad = await send(ON, '/v1/completions', { prompt: story, max_tokens: 4, cache_prompt: 'no' });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { param: string; code: string } }).error).toMatchObject({
      param: 'cache_prompt',
      code: 'invalid_type',
    });
    const session = await send(ON, '/v1/chat/completions', {
      messages: [{ role: 'user', content: 'Hi' }],
      session_id: 'no-such-session',
      cache_prompt: false,
    });
    expect(session.status).toBe(400);
    expect(((await session.json()) as { error: { param: string } }).error.param).toBe('cache_prompt');
  });

  it('refuses to serve with a PREFIX_CACHE_MB that is not a size (a deployment mistake, 503)', async () => {
    const res = await send({ PREFIX_CACHE_MB: '-1' }, '/v1/completions', { prompt: story, max_tokens: 4 });
    expect(res.status).toBe(503);
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('server_misconfigured');
    expect(body.error.message).toMatch(/PREFIX_CACHE_MB/);
  });

  it("split (2 layer groups, 1 chain): the groups keep the finished request's state, the next one reuses it, dense and lazy, and answers as unsplit", async () => {
    const doc =
      'Ben had a little boat. Every morning he sailed it on the pond near his house. One day the wind was very strong ' +
      'and the boat went far away. Ben ran around the pond to find it. A duck was sitting in the boat!';
    for (const lazy of [{ enabled: false }, { schedule: 'bos,1:0.5,3:0.5' }]) {
      const tag = lazy.enabled === false ? 'Dense.' : 'Lazy.';
      // Each pass its own document (the tag first), so that split and unsplit start it from nothing alike.
      const body = (end: string) => ({ prompt: `${tag} ${doc} ${end}`, max_tokens: 16, temperature: 0, lazy });
      const SPLIT = { ...ON, LAYER_GROUPS: '2', GROUP_CHAINS: '1' };
      // The same two requests, split and unsplit, each through its cache.
      await ok(SPLIT, '/v1/completions', body('The duck'));
      const split = await ok(SPLIT, '/v1/completions', body('Then Ben'));
      await ok(ON, '/v1/completions', body('The duck'));
      const whole = await ok(ON, '/v1/completions', body('Then Ben'));
      expect(split.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(40);
      expect(split.usage.prompt_tokens_details.cached_tokens).toBe(whole.usage.prompt_tokens_details.cached_tokens);
      expect(text(split)).toBe(text(whole));
      expect(split.lazy_stats.computed_per_layer).toEqual(whole.lazy_stats.computed_per_layer);
      expect(split.lazy_stats.revived_per_layer).toEqual(whole.lazy_stats.revived_per_layer);
      // Only the new tokens were computed.
      const fresh = await ok(SPLIT, '/v1/completions', { ...body('Then Ben'), cache_prompt: false });
      expect(fresh.usage.prompt_tokens_details.cached_tokens).toBe(0);
      expect(sum(split.lazy_stats.computed_per_layer)).toBeLessThan(sum(fresh.lazy_stats.computed_per_layer));
      if (lazy.enabled === false) expect(text(split)).toBe(text(fresh));
    }
  });
});

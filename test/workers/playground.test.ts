/**
 * Inside workerd: the playground page's route, CORS by configuration, and the opt-in
 * `lazy_stats.trace` the page draws (its schema, checked with zod, and its size bound), over the
 * real Worker entrypoint. The page itself runs in a browser in test/node/playground-browser.test.ts.
 */
import { env } from 'cloudflare:workers';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { traceSizeBound } from '../../src/engine/trace.js';
import { sha256Hex } from '../../src/model/manifest.js';
import { parseRuntimeList } from '../../src/playground/runtime-files.js';
import { MODEL, post, readEvents, withEnv, worker } from '../support/http.js';

const SCHEDULE = 'bos,1:0.5,3:0.5';
const MESSAGES = [{ role: 'user', content: 'Once upon a time, there was a little fox who lived in the forest.' }];

/** The documented shape of lazy_stats.trace, strictly: no other keys. */
const traceSchema = z
  .object({
    layers: z.number().int().positive(),
    tokens: z.number().int().positive(),
    pieces: z.array(z.string()),
    reused: z.number().int().min(0),
    depth_before: z.array(z.number().int().min(1)),
    prefill_depth: z.array(z.number().int().min(0)),
    question: z.tuple([z.number().int().min(0), z.number().int().min(1)]).nullable(),
    revivals: z.array(
      z.tuple([z.number().int().min(1), z.number().int().min(0), z.number().int().min(0), z.number().int().min(1)]),
    ),
    revivals_dropped: z.number().int().min(0),
  })
  .strict();
type Trace = z.infer<typeof traceSchema>;

const jsonBytes = (v: unknown) => new TextEncoder().encode(JSON.stringify(v)).length;

function checkTrace(t: unknown, promptTokens: number): Trace {
  const trace = traceSchema.parse(t);
  expect(trace.tokens).toBe(promptTokens);
  expect(trace.pieces).toHaveLength(trace.tokens);
  expect(trace.prefill_depth).toHaveLength(trace.tokens);
  expect(trace.depth_before).toHaveLength(trace.reused);
  expect(Math.max(...trace.prefill_depth)).toBeLessThanOrEqual(trace.layers);
  if (trace.question) expect(trace.question[1]).toBeLessThanOrEqual(trace.tokens);
  expect(jsonBytes(trace)).toBeLessThanOrEqual(
    traceSizeBound(trace.tokens, trace.layers, 512, jsonBytes(trace.pieces)),
  );
  return trace;
}

describe('GET / and /playground', () => {
  it('serves the page as HTML whose one script the CSP allows by hash, with no key needed', async () => {
    for (const path of ['/', '/playground']) {
      const res = await withEnv({ API_KEYS: 'secret-key' }, path);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/html; charset=utf-8/i);
      const html = await res.text();
      expect(html).toContain('<title>lazy-edge playground</title>');
      const script = /<script>([\s\S]*?)<\/script>/.exec(html)![1];
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(script)));
      const csp = res.headers.get('content-security-policy')!;
      // 'self': the in-browser engine's bundle; 'wasm-unsafe-eval': compiling onnxruntime's binary
      expect(csp).toContain(`script-src 'self' 'wasm-unsafe-eval' 'sha256-${btoa(String.fromCharCode(...digest))}'`);
      expect(csp).not.toMatch(/'unsafe-eval'|'unsafe-inline'[^;]*script|script-src[^;]*\*/);
      expect(csp).toContain("connect-src 'self'");
    }
  });

  it('keeps the model shards private: asset paths are not served', async () => {
    for (const path of [
      `/${MODEL}/manifest.json`,
      '/stories260K/tokenizer.bin',
      '/playground/../stories260K/manifest.json',
    ]) {
      const res = await worker(path);
      expect(res.status, path).toBe(404);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('unknown_url');
    }
  });
});

describe('GET /playground/runtime.json and /playground/files/{file}: what "run in this browser" downloads', () => {
  it('lists the engine bundle and the binary in parts within the asset limit; every file has its hash, the parts make the binary', async () => {
    const res = await withEnv({ API_KEYS: 'secret-key' }, '/playground/runtime.json');
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-cache');
    const list = parseRuntimeList(await res.text());
    expect(list.wasm.file).toBe('ort-wasm-simd-threaded.asyncify.wasm');
    expect(list.wasm.parts.length).toBeGreaterThanOrEqual(2); // the whole is over 25 MiB
    const parts: Uint8Array[] = [];
    for (const f of [list.engine, ...list.wasm.parts]) {
      const r = await withEnv({ API_KEYS: 'secret-key' }, `/playground/files/${f.file}`);
      expect(r.status, f.file).toBe(200);
      expect(r.headers.get('cache-control')).toBe('public, max-age=31536000, immutable');
      expect(r.headers.get('etag')).toBe(`"${f.sha256}"`);
      const bytes = new Uint8Array(await r.arrayBuffer());
      expect(bytes.byteLength, f.file).toBe(f.bytes);
      expect(bytes.byteLength).toBeLessThanOrEqual(25 * 1024 * 1024);
      expect(await sha256Hex(bytes), f.file).toBe(f.sha256);
      if (f !== list.engine) parts.push(bytes);
    }
    const whole = new Uint8Array(list.wasm.bytes);
    let at = 0;
    for (const p of parts) whole.set(p, (at += p.byteLength) - p.byteLength);
    expect(await sha256Hex(whole)).toBe(list.wasm.sha256);
    expect(new TextDecoder().decode(whole.subarray(1, 4))).toBe('asm'); // a WebAssembly binary
  });

  it('serves nothing else from the assets: not the list under files/, not a model file, not a made-up name', async () => {
    for (const path of [
      '/playground/files/runtime.json',
      `/playground/files/manifest.json`,
      '/playground/files/engine.0000000000000000.js',
      '/playground/files/..%2Fstories260K%2Fmanifest.json',
    ]) {
      const res = await worker(path);
      expect(res.status, path).toBe(404);
    }
  });
});

describe('CORS (CORS_ORIGINS)', () => {
  const preflight = (origin: string) => ({
    method: 'OPTIONS',
    headers: {
      Origin: origin,
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'authorization, content-type',
    },
  });

  it('is off by default: a preflight is refused and no answer carries CORS headers', async () => {
    expect(env.CORS_ORIGINS).toBeUndefined();
    const res = await worker('/v1/chat/completions', preflight('https://app.example'));
    expect(res.status).toBe(405);
    expect(res.headers.get('access-control-allow-origin')).toBeNull();
    const get = await worker('/v1/models', { headers: { Origin: 'https://app.example' } });
    expect(get.status).toBe(200);
    expect(get.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('answers preflights and responses, errors included, for listed origins only', async () => {
    const cfg = { CORS_ORIGINS: 'https://app.example, http://localhost:5173', API_KEYS: 'k1' };
    const ok = await withEnv(cfg, '/v1/chat/completions', preflight('https://app.example'));
    expect(ok.status).toBe(204);
    expect(ok.headers.get('access-control-allow-origin')).toBe('https://app.example');
    expect(ok.headers.get('access-control-allow-methods')).toContain('POST');
    expect(ok.headers.get('access-control-allow-headers')!.toLowerCase()).toContain('authorization');
    expect(ok.headers.get('vary')).toContain('Origin');

    // An origin not on the list gets no preflight answer (the router's 401 or 405) and no CORS header.
    const other = await withEnv(cfg, '/v1/chat/completions', preflight('https://evil.example'));
    expect(other.status).toBeGreaterThanOrEqual(400);
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
    // Every answer varies with Origin once CORS is configured, one without CORS headers too (issue 26, item 8).
    expect(other.headers.get('vary')).toContain('Origin');
    for (const headers of [{ Origin: 'https://evil.example' }, {}] as Record<string, string>[]) {
      const plain = await withEnv(cfg, '/healthz', { headers });
      expect(plain.status).toBe(200);
      expect(plain.headers.get('vary')).toContain('Origin');
    }

    // A real request from a listed origin: the 401 (no key) is readable by that origin's script.
    const denied = await withEnv(cfg, '/v1/models', { headers: { Origin: 'http://localhost:5173' } });
    expect(denied.status).toBe(401);
    expect(denied.headers.get('access-control-allow-origin')).toBe('http://localhost:5173');
    const allowed = await withEnv(cfg, '/v1/models', {
      headers: { Origin: 'http://localhost:5173', Authorization: 'Bearer k1' },
    });
    expect(allowed.status).toBe(200);
    expect(allowed.headers.get('access-control-allow-origin')).toBe('http://localhost:5173');
    expect(allowed.headers.get('access-control-expose-headers')).toContain('Server-Timing');
  });

  it('refuses a wildcard or a URL with a path as a configuration mistake', async () => {
    for (const bad of ['*', 'https://app.example/path']) {
      const res = await withEnv({ CORS_ORIGINS: bad }, '/v1/models', { headers: { Origin: 'https://app.example' } });
      expect(res.status).toBe(503);
      const body = (await res.json()) as { error: { code: string; message: string } };
      expect(body.error.code).toBe('server_misconfigured');
      expect(body.error.message).toContain(`CORS_ORIGINS must list origins like https://example.com`);
    }
  });
});

describe('lazy.trace', () => {
  it('is absent unless asked for, and is refused when not a boolean', async () => {
    const res = await post('/v1/chat/completions', { model: MODEL, messages: MESSAGES, max_tokens: 4, seed: 1 });
    expect(((await res.json()) as { lazy_stats: object }).lazy_stats).not.toHaveProperty('trace');
    const bad = await post('/v1/chat/completions', {
      model: MODEL,
      messages: MESSAGES,
      max_tokens: 4,
      lazy: { trace: 'yes' },
    });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { param: string } }).error.param).toBe('lazy.trace');
  });

  it('rides on the last chunk of a stream, matching the prefill statistics', async () => {
    const res = await post('/v1/chat/completions', {
      model: MODEL,
      messages: MESSAGES,
      max_tokens: 30,
      seed: 2,
      stream: true,
      lazy: { schedule: SCHEDULE, trace: true },
    });
    expect(res.status).toBe(200);
    const { events } = await readEvents(res);
    const last = JSON.parse(events.at(-2)!) as {
      lazy_stats: { prompt_tokens: number; prefill_computed_per_layer: number[]; revived: number; trace: unknown };
    };
    const t = checkTrace(last.lazy_stats.trace, last.lazy_stats.prompt_tokens);
    expect(t.reused).toBe(0);
    // The question (the user message's last paragraph, here all of it) as the template rendered it.
    expect(t.question).not.toBeNull();
    expect(t.pieces.slice(t.question![0], t.question![1]).join('').trim()).toBe(MESSAGES[0].content);
    const rows = Array.from({ length: t.layers }, (_, l) => t.prefill_depth.filter((d) => l < d).length);
    expect(rows).toEqual(last.lazy_stats.prefill_computed_per_layer);
    expect(t.revivals.length).toBe(last.lazy_stats.revived);
  });

  it('covers the whole conversation in a session, with what earlier turns computed', async () => {
    const created = (await (await post('/v1/sessions', {})).json()) as { id: string };
    const turn = async (content: string) => {
      const res = await post(`/v1/sessions/${created.id}/messages`, {
        content,
        max_tokens: 20,
        seed: 3,
        lazy: { schedule: SCHEDULE, trace: true },
      });
      expect(res.status).toBe(200);
      return (await res.json()) as {
        usage: { prompt_tokens: number };
        lazy_stats: { trace: unknown };
        session: { stats: { reused_tokens: number } };
      };
    };
    await turn('Once upon a time, there was a big bear.');
    const second = await turn('The bear was hungry.');
    const t = checkTrace(second.lazy_stats.trace, second.usage.prompt_tokens);
    expect(t.reused).toBe(second.session.stats.reused_tokens);
    expect(t.reused).toBeGreaterThan(0);
  });
});

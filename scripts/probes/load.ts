/**
 * npm run load -- [--url http://127.0.0.1:8787] [--clients 8] [--requests 48] [--max-seconds 120] [--max-tokens 24]
 * A bounded load test against a running server (npm start), loopback only. `--clients` workers run in
 * parallel until `--requests` requests have been sent or `--max-seconds` have passed; each request is
 * one of: a streamed completion, a non-streamed completion, a streamed session turn, a non-streamed
 * session turn (on a session each client creates once and deletes at the end). Meanwhile a probe asks
 * GET /healthz every 250 ms: its latency under load is the fairness figure (a generation that does not
 * yield between tokens holds every other request of the isolate back; issue #14, item 2).
 * Reports per kind: requests, errors, p50/p95 latency and p50/p95 time to first byte of the body.
 * Progress on stderr; a table and then one JSON line on stdout. API_KEY in the environment is sent
 * as a bearer key when set.
 */
import { parseArgs } from 'node:util';
import { fail, progress, runMain } from '../lib/node-env.js';

type Kind = 'completion_stream' | 'completion' | 'session_stream' | 'session' | 'healthz';
const KINDS: Kind[] = ['completion_stream', 'completion', 'session_stream', 'session', 'healthz'];

interface Sample {
  kind: Kind;
  ok: boolean;
  status: number;
  ms: number;
  ttfb_ms: number;
  error?: string;
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

function quantile(xs: number[], q: number): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

const round = (v: number | null) => (v === null ? null : Math.round(v * 10) / 10);

const USAGE = `usage: npm run load -- [--url http://127.0.0.1:8787] [--clients 8] [--requests 48] [--max-seconds 120] [--max-tokens 24]
  Loads a running server (loopback only) with streamed and non-streamed completions and session turns
  from --clients parallel clients, until --requests were sent or --max-seconds passed, while probing
  GET /healthz every 250 ms. Prints per kind requests, errors, p50/p95 latency and time to first byte,
  then one JSON line. API_KEY in the environment is sent as a bearer key.`;

async function main(): Promise<void> {
  let values;
  try {
    values = parseArgs({
      options: {
        url: { type: 'string', default: 'http://127.0.0.1:8787' },
        clients: { type: 'string', default: '8' },
        requests: { type: 'string', default: '48' },
        'max-seconds': { type: 'string', default: '120' },
        'max-tokens': { type: 'string', default: '24' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }).values;
  } catch (e) {
    fail(`${(e as Error).message}\n${USAGE}`);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const url = new URL(values.url!);
  if (!LOOPBACK.has(url.hostname))
    fail(`--url must be a loopback address (127.0.0.1, localhost, ::1), got ${url.hostname}`);
  const base = url.origin;
  const clients = Number(values.clients);
  const total = Number(values.requests);
  const maxSeconds = Number(values['max-seconds']);
  const maxTokens = Number(values['max-tokens']);
  for (const [name, v, hi] of [
    ['clients', clients, 64],
    ['requests', total, 10_000],
    ['max-seconds', maxSeconds, 3600],
    ['max-tokens', maxTokens, 512],
  ] as const) {
    if (!Number.isInteger(v) || v < 1 || v > hi) fail(`--${name} must be an integer in 1..${hi}, got ${v}`);
  }
  const headers: Record<string, string> = { 'Content-Type': 'application/json' };
  if (process.env.API_KEY) headers.Authorization = `Bearer ${process.env.API_KEY}`;

  const health = await fetch(`${base}/healthz`).catch((e) => fail(`no server at ${base}: ${e}`));
  if (!health.ok) fail(`GET /healthz: HTTP ${health.status}`);
  const model = ((await health.json()) as { model: string }).model;
  progress(`load: ${base} serves ${model}; ${clients} clients, ${total} requests, at most ${maxSeconds} s`);

  const deadline = performance.now() + maxSeconds * 1000;
  const stopAt = AbortSignal.timeout(maxSeconds * 1000 + 30_000);
  const samples: Sample[] = [];

  /**
   * One request, timed to its first body byte and to its end; a stream must end with [DONE] and no
   * error event. The keep-alive comments a stream sends while it prefills (`: prefilling`,
   * src/worker/job/keep-alive.ts) are not its first byte here: that is its first event.
   */
  async function timed(kind: Kind, path: string, init: RequestInit): Promise<Sample> {
    const t0 = performance.now();
    let ttfb = NaN;
    try {
      const res = await fetch(`${base}${path}`, { ...init, signal: stopAt });
      const reader = res.body!.getReader();
      const dec = new TextDecoder();
      let text = '';
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        text += dec.decode(value, { stream: true });
        if (Number.isNaN(ttfb)) {
          const rest = text.replace(/^(:[^\n]*\n\n)+/, '');
          if (rest !== '' && !rest.startsWith(':')) ttfb = performance.now() - t0;
        }
      }
      const ms = performance.now() - t0;
      let error: string | undefined;
      if (!res.ok) error = `HTTP ${res.status}: ${text.slice(0, 200)}`;
      else if (/^(:[^\n]*\n\n)*data: /.test(text)) {
        if (text.includes('data: {"error"'))
          error = `stream error: ${text.slice(text.indexOf('data: {"error"'), text.indexOf('data: {"error"') + 200)}`;
        else if (!text.endsWith('data: [DONE]\n\n')) error = 'stream ended without [DONE]';
      }
      return {
        kind,
        ok: !error,
        status: res.status,
        ms,
        ttfb_ms: Number.isNaN(ttfb) ? ms : ttfb,
        ...(error ? { error } : {}),
      };
    } catch (e) {
      const ms = performance.now() - t0;
      return { kind, ok: false, status: 0, ms, ttfb_ms: ms, error: String(e) };
    }
  }

  let sent = 0;
  let done = 0;
  const post = (body: object): RequestInit => ({ method: 'POST', headers, body: JSON.stringify(body) });
  const prompt = (k: number) => `Once upon a time, client ${k} met a little dog.`;

  async function client(k: number): Promise<void> {
    const created = await fetch(`${base}/v1/sessions`, { method: 'POST', headers, body: '{}' });
    const sessionId = created.ok ? ((await created.json()) as { id: string }).id : null;
    if (!sessionId) progress(`load: client ${k} could not create a session (HTTP ${created.status})`);
    for (let i = 0; ; i++) {
      if (sent >= total || performance.now() >= deadline) break;
      const n = sent++;
      const kind = KINDS[(n + k) % 4];
      const gen = { max_tokens: maxTokens, temperature: 0.8, seed: n + 1 };
      let s: Sample;
      if (kind === 'completion_stream' || kind === 'completion') {
        s = await timed(
          kind,
          '/v1/completions',
          post({ model, prompt: prompt(k), stream: kind === 'completion_stream', ...gen }),
        );
      } else if (sessionId) {
        // Keep the session short: a fresh history whenever it would grow past a few turns.
        s = await timed(
          kind,
          `/v1/chat/completions`,
          post({
            model,
            session_id: sessionId,
            messages: [{ role: 'user', content: `${prompt(k)} Turn ${i % 3}.` }],
            stream: kind === 'session_stream',
            ...gen,
          }),
        );
      } else {
        s = { kind, ok: false, status: 0, ms: 0, ttfb_ms: 0, error: 'no session' };
      }
      samples.push(s);
      done++;
      if (!s.ok) progress(`load: ${kind} failed: ${s.error}`);
      if (done % 8 === 0) progress(`load: ${done}/${total} done`);
    }
    if (sessionId)
      await fetch(`${base}/v1/sessions/${sessionId}`, { method: 'DELETE', headers }).catch(() => undefined);
  }

  let probing = true;
  const probe = (async () => {
    while (probing) {
      samples.push(await timed('healthz', '/healthz', { method: 'GET' }));
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, (_, k) => client(k)));
  probing = false;
  await probe;
  const wallS = (performance.now() - t0) / 1000;

  const rows = KINDS.map((kind) => {
    const mine = samples.filter((s) => s.kind === kind);
    const ok = mine.filter((s) => s.ok);
    return {
      kind,
      requests: mine.length,
      errors: mine.length - ok.length,
      p50_ms: round(
        quantile(
          ok.map((s) => s.ms),
          0.5,
        ),
      ),
      p95_ms: round(
        quantile(
          ok.map((s) => s.ms),
          0.95,
        ),
      ),
      ttfb_p50_ms: round(
        quantile(
          ok.map((s) => s.ttfb_ms),
          0.5,
        ),
      ),
      ttfb_p95_ms: round(
        quantile(
          ok.map((s) => s.ttfb_ms),
          0.95,
        ),
      ),
    };
  });
  const errors = [...new Set(samples.filter((s) => !s.ok).map((s) => `${s.kind}: ${s.error}`.slice(0, 160)))].slice(
    0,
    10,
  );
  const cols = ['kind', 'requests', 'errors', 'p50_ms', 'p95_ms', 'ttfb_p50_ms', 'ttfb_p95_ms'] as const;
  const cell = (v: unknown) => String(v ?? '-');
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) =>
    vals.map((v, i) => (i === 0 ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join('  ');
  console.log(line([...cols]));
  for (const r of rows) console.log(line(cols.map((c) => cell(r[c]))));
  console.log(
    JSON.stringify({
      url: base,
      model,
      clients,
      requests: done,
      wall_s: Math.round(wallS * 10) / 10,
      max_tokens: maxTokens,
      kinds: rows,
      errors,
    }),
  );
}

runMain(main);

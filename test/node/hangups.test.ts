/**
 * SPAWNS the local server (three of them): clients that hang up and clients that upload too much,
 * driven as a real client does it, over raw sockets (issue 26, items 1 to 3).
 *
 * Starts `scripts/serve.ts` on stories260K in its own process group, on ports 8830-8899 of
 * 127.0.0.1 only: unsplit, split (LAYER_GROUPS 3, GROUP_CHAINS 1) and with API_KEYS set. Each
 * fault is repeated many times, because the ones this guards against struck about one time in
 * three: a streamed session turn hung up before the first byte, after the headers or mid-token must
 * leave the session free and as it was; a hung-up stateless stream in split mode must give its
 * chain back; an oversized upload (chunked, or a Content-Length body sent after the headers) must
 * get its 413 and leave the next request on a new connection answered. Whatever the test started
 * is killed by its process group, whether it passes or fails.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnServe } from '../../scripts/lib/wrangler-dev.js';
import { exited, killGroup } from '../support/wrangler-dev.js';

const HOST = '127.0.0.1';
const TRIES = 24;
/** How often a poll asks whether a hung-up request has let go; far more than any abandon takes (one token). */
const POLLS = 2000;
const KEY = 'sk-hangups-test';

type HangUp = 'before-first-byte' | 'after-headers' | 'mid-token';
const POINTS: HangUp[] = ['before-first-byte', 'after-headers', 'mid-token'];

interface Server {
  child: ChildProcess;
  port: number;
  log: string;
}

const started: ChildProcess[] = [];
const dir = mkdtempSync(join(tmpdir(), 'lazy-edge-hangups-'));

/** Nobody answers on it and it can be bound: workerd's listeners let a probe bind their port, so a connect comes first. */
const isFree = (port: number) =>
  new Promise<boolean>((resolve) => {
    const probe = connect(port, HOST);
    probe.once('connect', () => {
      probe.destroy();
      resolve(false);
    });
    probe.once('error', () => {
      const s = createServer();
      s.once('error', () => resolve(false));
      s.listen(port, HOST, () => s.close(() => resolve(true)));
    });
  });

let nextPort = 8830;
async function freePort(): Promise<number> {
  for (; nextPort <= 8899; nextPort++) if (await isFree(nextPort)) return nextPort++;
  throw new Error('no free port in 8830-8899');
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function serve(name: string, vars: string[]): Promise<Server> {
  const port = await freePort();
  const log = join(dir, `${name}.log`);
  const args = [
    '--ip',
    HOST,
    '--port',
    String(port),
    '--persist-to',
    join(dir, name),
    '--var',
    'MODEL_NAME:stories260K',
  ];
  const child = spawnServe([...args, ...vars.flatMap((v) => ['--var', v])], log);
  started.push(child);
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`the local server exited; log:\n${readFileSync(log, 'utf8')}`);
    try {
      if ((await fetch(`http://${HOST}:${port}/healthz`)).ok) return { child, port, log };
    } catch {
      // not listening yet
    }
    await pause(250);
  }
}

/** A whole exchange on a new connection (fetch would pool connections; each request here must be alone on its own). */
async function call(
  s: Server,
  method: string,
  path: string,
  body?: object,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: any }> {
  const res = await fetch(`http://${HOST}:${s.port}${path}`, {
    method,
    headers: { 'content-type': 'application/json', connection: 'close', ...headers },
    body: body && JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, json };
}

const requestHead = (method: string, path: string, headers: Record<string, string>) =>
  `${method} ${path} HTTP/1.1\r\nHost: ${HOST}\r\n${Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n`;

/**
 * Sends a streamed POST on a raw socket and destroys the socket at `point`: right after the
 * request is written, once the response headers are in, or after `chunks` SSE events.
 * Resolves with what had arrived.
 */
function hangUp(s: Server, path: string, body: object, point: HangUp, chunks = 1): Promise<string> {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const sock: Socket = connect(s.port, HOST);
    let got = '';
    const done = () => {
      sock.destroy();
      resolve(got);
    };
    sock.on('error', reject);
    sock.on('connect', () => {
      sock.write(
        requestHead('POST', path, {
          'content-type': 'application/json',
          'content-length': String(Buffer.byteLength(payload)),
        }) + payload,
        () => {
          if (point === 'before-first-byte') done();
        },
      );
    });
    sock.on('data', (d) => {
      got += d.toString('latin1');
      const head = got.indexOf('\r\n\r\n');
      if (head < 0) return;
      if (!got.startsWith('HTTP/1.1 200')) return reject(new Error(`not a stream: ${got.slice(0, 300)}`));
      if (point === 'after-headers') return done();
      // the opening chunk (the assistant role), then `chunks` chunks of text
      if (point === 'mid-token' && got.slice(head).split('\ndata: ').length - 1 > chunks) done();
    });
    sock.on('end', () => resolve(got));
  });
}

/** Polls `probe` until it answers something other than `busy`; the answer, or `busy` if it never let go. */
async function untilNot(
  busy: number,
  probe: () => Promise<{ status: number; json: any }>,
): Promise<{ status: number; json: any; polls: number }> {
  let r = await probe();
  let polls = 0;
  while (r.status === busy && polls < POLLS) {
    await pause(10);
    r = await probe();
    polls++;
  }
  return { ...r, polls };
}

let plain: Server;
let split: Server;
let keyed: Server;

beforeAll(async () => {
  [plain, split, keyed] = await Promise.all([
    serve('plain', []),
    serve('split', ['LAYER_GROUPS:3', 'GROUP_CHAINS:1']),
    serve('keyed', [`API_KEYS:${KEY}`]),
  ]);
}, 240_000);

afterAll(async () => {
  for (const c of started) killGroup(c, 'SIGKILL');
  await Promise.all(started.map(exited));
  rmSync(dir, { recursive: true, force: true });
});

describe('[spawns the local server] a streamed session turn hung up by its client (item 1)', () => {
  for (const route of ['messages', 'chat'] as const) {
    it(`frees the session, as it was, ${TRIES} times over at every hang-up point (${route === 'messages' ? '/v1/sessions/:id/messages' : '/v1/chat/completions with session_id'})`, async () => {
      const outcomes: string[] = [];
      for (let i = 0; i < TRIES; i++) {
        const point = POINTS[i % POINTS.length];
        const created = await call(plain, 'POST', '/v1/sessions');
        expect(created.status).toBe(200);
        const id = created.json.id as string;
        const first = await call(plain, 'POST', `/v1/sessions/${id}/messages`, { content: 'Hi', max_tokens: 5 });
        expect(first.status, JSON.stringify(first.json)).toBe(200);
        const history = [
          { role: 'user', content: 'Hi' },
          { role: 'assistant', content: first.json.choices[0].message.content },
        ];
        const streamed =
          route === 'messages'
            ? hangUp(
                plain,
                `/v1/sessions/${id}/messages`,
                { content: 'And then?', max_tokens: 400, stream: true },
                point,
                1 + (i % 4),
              )
            : hangUp(
                plain,
                '/v1/chat/completions',
                {
                  model: 'stories260K',
                  session_id: id,
                  messages: [...history, { role: 'user', content: 'And then?' }],
                  max_tokens: 400,
                  stream: true,
                },
                point,
                1 + (i % 4),
              );
        await streamed;
        // max_tokens 1000 does not fit the context: a free session refuses it with 400 and stays as it is, a busy one answers 409.
        const probe = await untilNot(409, () =>
          call(plain, 'POST', `/v1/sessions/${id}/messages`, { content: 'x', max_tokens: 1000 }),
        );
        outcomes.push(`${point}:${probe.status}`);
        expect(
          probe.status,
          `try ${i} (${point}): the session is still busy after ${probe.polls} polls: ${JSON.stringify(probe.json)}`,
        ).toBe(400);
        const after = await call(plain, 'GET', `/v1/sessions/${id}`);
        const msgs = after.json.messages as { role: string; content: string }[];
        if (point === 'mid-token' && msgs.length === history.length + 2) {
          // stories260K may end its story within the chunks read before the hang-up: the turn then
          // finished before the server could see the client leave, and is stored whole like any
          // finished turn (never a half turn: the user message and a complete reply, or nothing).
          expect(msgs.slice(0, history.length)).toEqual(history);
          expect(msgs[history.length]).toEqual({ role: 'user', content: 'And then?' });
          expect(msgs[history.length + 1].role).toBe('assistant');
        } else expect(msgs, `try ${i} (${point}): the abandoned turn left the conversation as it was`).toEqual(history);
        const next = await call(plain, 'POST', `/v1/sessions/${id}/messages`, { content: 'Go on.', max_tokens: 3 });
        expect(next.status, JSON.stringify(next.json)).toBe(200);
      }
      console.log(`hung-up session turns (${route}): ${outcomes.join(' ')}`);
    });
  }
});

describe('[spawns the local server] a hung-up stateless stream in split mode (item 2)', () => {
  it(`gives its group chain back, ${TRIES} times over at every hang-up point`, async () => {
    for (let i = 0; i < TRIES; i++) {
      const point = POINTS[i % POINTS.length];
      await hangUp(
        split,
        '/v1/chat/completions',
        { model: 'stories260K', messages: [{ role: 'user', content: 'Once' }], max_tokens: 400, stream: true },
        point,
        1 + (i % 4),
      );
      // GROUP_CHAINS 1: while the hung-up request holds the only chain, every other one gets 503 server_busy.
      const probe = await untilNot(503, () =>
        call(split, 'POST', '/v1/completions', { model: 'stories260K', prompt: 'Once', max_tokens: 2 }),
      );
      expect(
        probe.status,
        `try ${i} (${point}): the chain is still held after ${probe.polls} polls: ${JSON.stringify(probe.json)}`,
      ).toBe(200);
      expect(probe.json.choices[0].text.length).toBeGreaterThan(0);
    }
  });
});

type Upload = 'chunked' | 'content-length, body after the headers';

/**
 * Uploads `size` bytes to /v1/completions on a raw socket, in 16 KiB pieces: chunked, or with a
 * Content-Length whose body follows the headers a moment later. Resolves with the answer once
 * it is whole, or with the error if the server reset the connection.
 */
function upload(s: Server, how: Upload, size: number, headers: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve) => {
    const sock = connect(s.port, HOST);
    let got = '';
    const piece = Buffer.alloc(16384, 'a');
    // The server keeps the connection open a while after its answer, Connection: close or not.
    const complete = () => {
      const head = got.indexOf('\r\n\r\n');
      if (head < 0) return false;
      const length = /\r\ncontent-length: *(\d+)/i.exec(got.slice(0, head));
      return length ? got.length - head - 4 >= Number(length[1]) : got.endsWith('\r\n0\r\n\r\n');
    };
    sock.on('data', (d) => {
      got += d.toString('latin1');
      if (complete()) {
        sock.destroy();
        resolve(got);
      }
    });
    sock.on('error', (e) => resolve(got || `error: ${e.message}`));
    sock.on('close', () => resolve(got));
    sock.on('connect', async () => {
      const framing: Record<string, string> =
        how === 'chunked' ? { 'transfer-encoding': 'chunked' } : { 'content-length': String(size) };
      sock.write(
        requestHead('POST', '/v1/completions', {
          'content-type': 'application/json',
          connection: 'close',
          ...framing,
          ...headers,
        }),
      );
      if (how !== 'chunked') await pause(20);
      for (let sent = 0; sent < size && !sock.destroyed; sent += piece.length) {
        const part = piece.subarray(0, Math.min(piece.length, size - sent));
        const ok = sock.write(
          how === 'chunked'
            ? Buffer.concat([Buffer.from(`${part.length.toString(16)}\r\n`), part, Buffer.from('\r\n')])
            : part,
        );
        if (!ok) await new Promise((r) => sock.once('drain', r));
      }
      if (how === 'chunked' && !sock.destroyed) sock.write('0\r\n\r\n');
    });
  });
}

describe('[spawns the local server] an oversized upload (item 3)', () => {
  const cases: { server: () => Server; how: Upload; headers: Record<string, string>; label: string }[] = [
    { server: () => plain, how: 'chunked', headers: {}, label: 'chunked' },
    {
      server: () => plain,
      how: 'content-length, body after the headers',
      headers: {},
      label: 'Content-Length, body after the headers',
    },
    { server: () => keyed, how: 'chunked', headers: {}, label: 'chunked, unauthenticated, API_KEYS set' },
  ];
  for (const c of cases) {
    it(`gets 413 and the next request on a new connection is answered, ${TRIES} times over (${c.label})`, async () => {
      const s = c.server();
      const auth: Record<string, string> = s === keyed ? { authorization: `Bearer ${KEY}` } : {};
      for (let i = 0; i < TRIES; i++) {
        const answer = await upload(s, c.how, 400_000, c.headers);
        expect(answer, `try ${i}: the oversized request's answer`).toMatch(/^HTTP\/1\.1 413 /);
        expect(answer).toContain('"code":"request_too_large"');
        const health = await call(s, 'GET', '/healthz');
        expect(health.status, `try ${i}: GET /healthz after the upload`).toBe(200);
        const next = await call(
          s,
          'POST',
          '/v1/completions',
          { model: 'stories260K', prompt: 'Once', max_tokens: 2 },
          auth,
        );
        expect(next.status, `try ${i}: POST after the upload: ${JSON.stringify(next.json)}`).toBe(200);
      }
    });
  }
});

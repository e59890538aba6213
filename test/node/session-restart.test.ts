/**
 * SPAWNS the local server (twice): a chat session survives a restart of the dev server.
 *
 * Starts `scripts/serve.ts --ip 127.0.0.1 --port <free> --persist-to <tmp dir> --var MODEL_NAME:stories260K` in its own
 * process group, creates a session and runs a turn, kills the server (SIGKILL to that process group,
 * by the PID this test spawned: wrangler and its workerd children, nothing else), starts it again
 * on the same persistence directory and continues the conversation. The replies must equal the
 * same turns run with the engine in this process on the same shards. Only 127.0.0.1 is contacted;
 * whatever the test started is killed and the directory removed, whether it passes or fails.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadModelFromDir } from '../../scripts/lib/node-env.js';
import { ensureDefaultShards } from '../../scripts/lib/shard-tasks.js';
import { SequenceState } from '../../src/engine/caches.js';
import { generate } from '../../src/engine/generate.js';
import { defaultSchedule } from '../../src/engine/policy.js';
import { renderChat } from '../../src/model/chat-prompt.js';
import { exited, killGroup, startWranglerDev, type DevServer } from '../support/wrangler-dev.js';

const TURNS = [
  { content: 'Once upon a time, there was a little bird named Pip.', max_tokens: 30, temperature: 0.7, seed: 5 },
  { content: 'Pip wanted to fly over the tall tree.', max_tokens: 30, temperature: 0.7, seed: 6 },
];

type Server = DevServer;

const started: ChildProcess[] = [];
const persist = mkdtempSync(join(tmpdir(), 'lazy-edge-persist-'));

const startServer = (n: number): Promise<Server> =>
  startWranglerDev(
    ['--persist-to', persist, '--var', 'MODEL_NAME:stories260K'],
    join(persist, `wrangler-${n}.log`),
    started,
  );

async function call<T>(s: Server, method: string, path: string, body?: object): Promise<T> {
  const res = await fetch(`${s.base}${path}`, {
    method,
    headers: { 'content-type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  const text = await res.text();
  expect(res.status, text).toBe(200);
  return JSON.parse(text) as T;
}

interface TurnBody {
  choices: { message: { content: string } }[];
  session: {
    stats: {
      reused_tokens: number;
      computed_per_layer: number[];
      cache: { storage_bytes: number; record_bytes: number };
    };
  };
}
interface SessionBody {
  id: string;
  messages: { role: string; content: string }[];
  stats: {
    state_source: string;
    tokens: number;
    depth_histogram: number[];
    storage_bytes: number;
    record_bytes: number;
  };
}

afterAll(async () => {
  for (const c of started) killGroup(c, 'SIGKILL');
  await Promise.all(started.map(exited));
  rmSync(persist, { recursive: true, force: true });
});

describe('[spawns the local server] a chat session across a dev-server restart', () => {
  it('keeps its conversation and caches in local persistence and continues exactly', async () => {
    // The reference: the same turns with the engine in this process, on the shards wrangler serves.
    const model = await loadModelFromDir(await ensureDefaultShards());
    const seq = new SequenceState(model.config);
    const conv: { role: 'user' | 'assistant'; content: string }[] = [];
    const expected: string[] = [];
    for (const t of TURNS) {
      conv.push({ role: 'user', content: t.content });
      const target = model.tokenizer.encode(renderChat(model.manifest.chatTemplate, conv), { bos: true });
      let keep = 0;
      while (keep < Math.min(seq.length, target.length) && seq.tokens[keep] === target[keep]) keep++;
      seq.truncate(Math.min(keep, target.length - 1));
      const r = await generate(model, seq, target.slice(Math.min(keep, target.length - 1)), {
        maxTokens: t.max_tokens,
        sampler: { temperature: t.temperature, topP: 1, topK: 0, seed: t.seed },
        schedule: defaultSchedule(model.config.nLayers),
      });
      conv.push({ role: 'assistant', content: r.text });
      expected.push(r.text);
    }

    const first = await startServer(1);
    const created = await call<SessionBody>(first, 'POST', '/v1/sessions', {});
    const t1 = await call<TurnBody>(first, 'POST', `/v1/sessions/${created.id}/messages`, TURNS[0]);
    expect(t1.choices[0].message.content).toBe(expected[0]);
    const before = await call<SessionBody>(first, 'GET', `/v1/sessions/${created.id}`);

    killGroup(first.child, 'SIGKILL'); // as abrupt as a crash
    await exited(first.child);

    const second = await startServer(2);
    const after = await call<SessionBody>(second, 'GET', `/v1/sessions/${created.id}`);
    expect(after.messages).toEqual(before.messages);
    expect(after.stats.state_source).toBe('records'); // loaded from the stored log, not rebuilt
    expect(after.stats.tokens).toBe(before.stats.tokens);
    expect(after.stats.depth_histogram).toEqual(before.stats.depth_histogram);
    const t2 = await call<TurnBody>(second, 'POST', `/v1/sessions/${created.id}/messages`, TURNS[1]);
    expect(t2.choices[0].message.content).toBe(expected[1]);
    expect(t2.session.stats.reused_tokens).toBeGreaterThan(0);
    console.log(
      `session across restart: ${before.stats.tokens} tokens, storage ${before.stats.storage_bytes} B (records ${before.stats.record_bytes} B) after turn 1; ${t2.session.stats.cache.storage_bytes} B after turn 2`,
    );
  });
});

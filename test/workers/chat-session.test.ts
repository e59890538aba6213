import { env } from 'cloudflare:workers';
import { abortAllDurableObjects, runDurableObjectAlarm, runInDurableObject } from 'cloudflare:test';
import { beforeAll, describe, expect, it } from 'vitest';
import { SequenceState } from '../../src/engine/caches.js';
import { generate } from '../../src/engine/generate.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { parseSchedule, type Schedule } from '../../src/engine/policy.js';
import { crc32, HEADER_BYTES } from '../../src/engine/state-codec.js';
import { runStep } from '../../src/engine/step.js';
import type {
  CacheStats,
  ChatSession,
  SessionInfo,
  TurnEvent,
  TurnOutcome,
  TurnRequest,
} from '../../src/worker/session/chat-session.js';
import { renderChat } from '../../src/model/chat-prompt.js';
import { getModel } from '../../src/worker/model-store.js';
import { MODEL, post, readEvents, withEnv, worker } from '../support/http.js';

/**
 * Chat sessions in workerd: the real Worker, the real ChatSession Durable Object (SQLite storage),
 * and the engine run directly in the test as the reference every session reply must equal.
 */

interface Turn {
  content: string;
  max_tokens: number;
  temperature: number;
  seed: number;
  lazy: { schedule: string };
}

/**
 * Prunes even these short turns: the default schedule keeps sets of up to 128 tokens whole, which
 * would leave the Aux Cache of a short conversation empty.
 */
const CHAT_SCHEDULE = 'bos,1:0.5,3:0.5';

const TURNS: Turn[] = [
  {
    content: 'Once upon a time, there was a little cat named Tom. Tom liked to play with a red ball in the garden.',
    max_tokens: 40,
    temperature: 0.8,
    seed: 11,
    lazy: { schedule: CHAT_SCHEDULE },
  },
  {
    content: 'One day, the ball rolled away into the big forest.',
    max_tokens: 40,
    temperature: 0.8,
    seed: 12,
    lazy: { schedule: CHAT_SCHEDULE },
  },
  {
    content: 'Tom was sad, but then he saw his friend the dog.',
    max_tokens: 40,
    temperature: 0.8,
    seed: 13,
    lazy: { schedule: CHAT_SCHEDULE },
  },
];

type Msg = { role: 'system' | 'user' | 'assistant'; content: string };

interface Reply {
  status: number;
  body: {
    choices: { message: { content: string }; finish_reason: string }[];
    usage: { prompt_tokens: number; completion_tokens: number; prompt_tokens_details: { cached_tokens: number } };
    lazy_stats: { computed_per_layer: number[] };
    session: TurnOutcome['session'];
  };
}

interface RefTurn {
  text: string;
  tokens: number[];
  reused: number;
  computed: number[];
  /** the same history and reply run dense with no cache (prefill everything, feed the same tokens) */
  denseRerun: number[];
}

let model: LoadedModel;
beforeAll(async () => {
  model = await getModel(env);
});

const encodeChat = (msgs: readonly Msg[]) =>
  model.tokenizer.encode(renderChat(model.manifest.chatTemplate, msgs), { bos: true });

/**
 * The reference: one SequenceState in this process, each turn keeping the longest common token
 * prefix and generating with the engine's own generate(); plus, per turn, a dense cache-free rerun of
 * the whole history with the same reply tokens, whose per-layer work the session must beat.
 */
async function reference(
  histories: Msg[][],
  turns: readonly Turn[],
  schedule: Schedule | null = parseSchedule(CHAT_SCHEDULE),
): Promise<RefTurn[]> {
  const seq = new SequenceState(model.config);
  const out: RefTurn[] = [];
  for (const [k, t] of turns.entries()) {
    const target = encodeChat(histories[k]);
    let keep = 0;
    while (keep < Math.min(seq.length, target.length) && seq.tokens[keep] === target[keep]) keep++;
    keep = Math.min(keep, target.length - 1);
    seq.truncate(keep);
    const sampler = { temperature: t.temperature, topP: 1, topK: 0, seed: t.seed };
    const r = await generate(model, seq, target.slice(keep), { maxTokens: t.max_tokens, sampler, schedule });
    const fed = seq.tokens.slice(target.length);
    const dense = new SequenceState(model.config);
    const denseComputed = (await runStep(model, dense, target, { schedule: null })).stats.computedPerLayer;
    for (const tok of fed)
      (await runStep(model, dense, [tok], { schedule: null })).stats.computedPerLayer.forEach(
        (c, l) => (denseComputed[l] += c),
      );
    out.push({
      text: r.text,
      tokens: r.tokens,
      reused: keep,
      computed: r.stats.computed_per_layer,
      denseRerun: denseComputed,
    });
  }
  return out;
}

/** The histories a /messages conversation renders: user, reply, user, reply, user. */
function appendHistories(replies: readonly string[], turns: readonly Turn[] = TURNS, start: Msg[] = []): Msg[][] {
  const h: Msg[][] = [];
  const conv: Msg[] = [...start];
  turns.forEach((t, k) => {
    conv.push({ role: 'user', content: t.content });
    h.push([...conv]);
    if (k < replies.length) conv.push({ role: 'assistant', content: replies[k] });
  });
  return h;
}

async function createSession(headers: Record<string, string> = {}, body: object = {}): Promise<string> {
  const res = await post('/v1/sessions', body, headers);
  expect(res.status, await res.clone().text()).toBe(200);
  return ((await res.json()) as { id: string }).id;
}

async function say(id: string, t: Turn, extra: object = {}): Promise<Reply> {
  const res = await post(`/v1/sessions/${id}/messages`, { ...t, ...extra });
  const body = await res.json();
  expect(res.status, JSON.stringify(body)).toBe(200);
  return { status: res.status, body: body as Reply['body'] };
}

async function info(id: string): Promise<SessionInfo> {
  const res = await worker(`/v1/sessions/${id}`);
  expect(res.status, await res.clone().text()).toBe(200);
  return (await res.json()) as SessionInfo;
}

/** What must not change when a request is refused: the conversation and every cache figure. */
async function snapshot(id: string) {
  const s = await info(id);
  return { messages: s.messages, stats: s.stats };
}

async function expectError(res: Response, status: number, code: string | null) {
  const text = await res.text();
  expect(res.status, text).toBe(status);
  const body = JSON.parse(text) as {
    error: { message: string; type: string; param: string | null; code: string | null };
  };
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(body.error.code).toBe(code);
  return body.error;
}

const stubFor = (owner: string, id: string) => env.CHAT_SESSIONS.get(env.CHAT_SESSIONS.idFromName(`${owner}/${id}`));

/** Flips one payload byte of a stored chunk, or rewrites its header fields with a valid checksum. */
async function damageChunk(id: string, seq: number, how: 'flip' | 'foreign') {
  await runInDurableObject(stubFor('anonymous', id), (_obj: ChatSession, state) => {
    const row = state.storage.sql.exec('SELECT bytes FROM chunks WHERE seq = ?', seq).one();
    const bytes = new Uint8Array((row.bytes as ArrayBuffer).slice(0));
    if (how === 'flip') bytes[HEADER_BYTES + 100] ^= 0x01;
    else {
      const dv = new DataView(bytes.buffer);
      dv.setUint32(8, dv.getUint32(8, true) ^ 0xffff, true);
      dv.setUint32(28, crc32(bytes.subarray(HEADER_BYTES), crc32(bytes.subarray(0, 28))), true);
    }
    state.storage.sql.exec('UPDATE chunks SET bytes = ? WHERE seq = ?', bytes.buffer, seq);
  });
}

describe('a three-turn session conversation', () => {
  let ref: RefTurn[];
  let replies: Reply[];

  beforeAll(async () => {
    const id = await createSession();
    replies = [];
    for (const t of TURNS) replies.push(await say(id, t));
    ref = await reference(appendHistories(replies.map((r) => r.body.choices[0].message.content)), TURNS);
  });

  it('gives the replies of a single-process run of the same turns', () => {
    expect(replies.map((r) => r.body.choices[0].message.content)).toEqual(ref.map((r) => r.text));
    replies.forEach((r, k) => {
      expect(r.body.usage.completion_tokens).toBe(ref[k].tokens.length);
      expect(r.body.session.stats.computed_per_layer).toEqual(ref[k].computed);
      expect(r.body.session.stats.reused_tokens).toBe(ref[k].reused);
      expect(r.body.usage.prompt_tokens_details.cached_tokens).toBe(ref[k].reused);
      expect(r.body.session.stats.dense_rerun_per_layer).toEqual(ref[k].denseRerun);
    });
    expect(ref.every((r) => r.text.length > 0)).toBe(true);
  });

  it('computes fewer tokens per layer in turns 2 and 3 than a dense rerun of the whole history', () => {
    for (const k of [1, 2]) {
      const s = replies[k].body.session.stats;
      expect(s.reused_tokens).toBeGreaterThan(0);
      s.computed_per_layer.forEach((c, l) => expect(c).toBeLessThan(ref[k].denseRerun[l]));
      // layer 0 sees only what is new: the new prompt tokens and the decode steps
      expect(s.computed_per_layer[0]).toBe(
        s.new_prompt_tokens + (ref[k].denseRerun[0] - replies[k].body.usage.prompt_tokens),
      );
    }
    // Figures for the record (docs/SESSIONS.md).
    console.log(
      'session turns, tokens computed per layer (session vs dense rerun):\n' +
        replies
          .map(
            (r, k) =>
              `  turn ${k + 1}: ${JSON.stringify(r.body.session.stats.computed_per_layer)} vs ${JSON.stringify(ref[k].denseRerun)}, revived ${JSON.stringify(r.body.session.stats.revived_per_layer)}, reused ${r.body.session.stats.reused_tokens}, delta ${r.body.session.stats.delta_bytes} B, storage ${r.body.session.stats.cache.storage_bytes} B, records ${r.body.session.stats.cache.record_bytes} B, kv ${r.body.session.stats.cache.kv_bytes} B, aux ${r.body.session.stats.cache.aux_bytes} B`,
          )
          .join('\n'),
    );
  });

  it('revives tokens from the Aux Cache in later turns and appends only what each turn changed', () => {
    const later = replies.slice(1).map((r) => r.body.session.stats);
    expect(later.some((s) => s.revived_per_layer.some((x) => x > 0))).toBe(true);
    for (const [k, r] of replies.entries()) {
      const c = r.body.session.stats.cache;
      expect(r.body.session.stats.compacted).toBe(false);
      // the log grows by each turn's delta; a delta is smaller than the whole cache
      const before = k === 0 ? 0 : replies[k - 1].body.session.stats.cache.record_bytes;
      expect(c.record_bytes).toBe(before + r.body.session.stats.delta_bytes);
      if (k > 0) expect(r.body.session.stats.delta_bytes).toBeLessThan(c.kv_bytes + c.aux_bytes);
      expect(c.storage_bytes).toBeGreaterThan(c.record_bytes);
    }
  });

  it('gives identical replies and statistics when the object is evicted between turns', async () => {
    const id = await createSession();
    const again: Reply[] = [];
    for (const t of TURNS) {
      await abortAllDurableObjects(); // drops every in-memory state; the next request loads from storage
      again.push(await say(id, t));
    }
    const strip = (r: Reply) => {
      const { cache, ...turn } = r.body.session.stats;
      const { state_source: _s, ...rest } = cache as CacheStats;
      return {
        text: r.body.choices[0].message.content,
        usage: r.body.usage,
        turn,
        cache: rest,
        computed: r.body.lazy_stats.computed_per_layer,
      };
    };
    expect(again.map(strip)).toEqual(replies.map(strip));
    await abortAllDurableObjects();
    const s = await info(id);
    expect(s.stats.state_source).toBe('records');
    expect(s.stats.recoveries).toBe(0);
    expect(s.messages).toHaveLength(6);
  });

  it('streams a turn as chat.completion.chunk events that reassemble to the same reply', async () => {
    const id = await createSession();
    let text = '';
    let last: Record<string, unknown> = {};
    for (const [k, t] of TURNS.entries()) {
      const res = await post(`/v1/sessions/${id}/messages`, {
        ...t,
        stream: true,
        stream_options: { include_usage: true },
      });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
      const { events } = await readEvents(res);
      expect(events.at(-1)).toBe('[DONE]');
      const chunks = events.slice(0, -1).map(
        (e) =>
          JSON.parse(e) as {
            object: string;
            choices: { delta: { content?: string; role?: string }; finish_reason: string | null }[];
            session?: TurnOutcome['session'];
            usage?: object;
          },
      );
      expect(chunks[0].choices[0].delta.role).toBe('assistant');
      text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
      expect(text).toBe(replies[k].body.choices[0].message.content);
      const fin = chunks.find((c) => c.choices[0]?.finish_reason)!;
      expect(fin.choices[0].finish_reason).toBe(replies[k].body.choices[0].finish_reason);
      expect(fin.session!.stats.computed_per_layer).toEqual(replies[k].body.session.stats.computed_per_layer);
      last = chunks.at(-1)!;
    }
    expect(last.usage).toEqual(replies[2].body.usage);
  });

  it('detects a damaged or foreign stored chunk and rebuilds the exact state from the turn records', async () => {
    for (const how of ['flip', 'foreign'] as const) {
      const id = await createSession();
      await say(id, TURNS[0]);
      await say(id, TURNS[1]);
      const before = await snapshot(id);
      await damageChunk(id, 1, how);
      await abortAllDurableObjects();
      const s = await info(id);
      expect(s.stats.state_source).toBe('rebuilt');
      expect(s.stats.recoveries).toBe(1);
      expect(s.stats.last_recovery).toMatch(how === 'flip' ? /^checksum_mismatch/ : /^foreign_model/);
      expect(s.messages).toEqual(before.messages);
      // the same cache as before the damage, now stored as one snapshot
      for (const k of [
        'tokens',
        'depth_histogram',
        'kv_bytes',
        'aux_bytes',
        'kv_entries',
        'aux_entries',
        'turns',
      ] as const)
        expect(s.stats[k]).toEqual(before.stats[k]);
      expect(s.stats.record_chunks).toBe(1);
      // and the conversation goes on exactly as if nothing had happened
      const third = await say(id, TURNS[2]);
      expect(third.body.choices[0].message.content).toBe(replies[2].body.choices[0].message.content);
      expect(third.body.session.stats.computed_per_layer).toEqual(replies[2].body.session.stats.computed_per_layer);
      await abortAllDurableObjects();
      expect((await info(id)).stats.state_source).toBe('records');
    }
  });

  it('rebuilds from the messages when even the turn records belong to another model', async () => {
    const id = await createSession();
    await say(id, TURNS[0]);
    await runInDurableObject(stubFor('anonymous', id), (_o: ChatSession, state) => {
      state.storage.sql.exec('UPDATE turns SET fingerprint = fingerprint + 1');
      state.storage.sql.exec('UPDATE session SET fingerprint = fingerprint + 1');
    });
    await abortAllDurableObjects();
    const s = await info(id);
    expect(s.stats.state_source).toBe('rebuilt');
    expect(s.stats.last_recovery).toMatch(/^foreign_model.*rebuilt from messages$/);
    const target = encodeChat(s.messages as Msg[]);
    expect(s.stats.tokens).toBe(target.length);
    expect(s.stats.turns).toBe(1);
    // and it answers: the next turn reuses the re-prefilled history
    const next = await say(id, TURNS[1]);
    expect(next.body.session.stats.reused_tokens).toBeGreaterThan(target.length - 3);
  });
});

describe('chat completions with a session', () => {
  it('reuses the longest common token prefix, and truncates (in storage too) where the client history diverges', async () => {
    const id = await createSession();
    const t = TURNS;
    const chat = async (messages: Msg[], turn: Turn, how: 'body' | 'header') => {
      const body = {
        model: MODEL,
        messages,
        max_tokens: turn.max_tokens,
        temperature: turn.temperature,
        seed: turn.seed,
        lazy: turn.lazy,
        ...(how === 'body' ? { session_id: id } : {}),
      };
      const res = await post('/v1/chat/completions', body, how === 'header' ? { 'x-session-id': id } : {});
      const json = await res.json();
      expect(res.status, JSON.stringify(json)).toBe(200);
      return json as Reply['body'];
    };
    const h1: Msg[] = [{ role: 'user', content: t[0].content }];
    const r1 = await chat(h1, t[0], 'body');
    const h2: Msg[] = [
      ...h1,
      { role: 'assistant', content: r1.choices[0].message.content },
      { role: 'user', content: t[1].content },
    ];
    const r2 = await chat(h2, t[1], 'header');
    // the client edits the past: another assistant reply in the middle
    const h3: Msg[] = [
      ...h1,
      { role: 'assistant', content: 'The cat slept all day.' },
      { role: 'user', content: t[2].content },
    ];
    const r3 = await chat(h3, t[2], 'body');

    const ref = await reference([h1, h2, h3], t);
    expect([r1, r2, r3].map((r) => r.choices[0].message.content)).toEqual(ref.map((r) => r.text));
    expect([r1, r2, r3].map((r) => r.session.stats.reused_tokens)).toEqual(ref.map((r) => r.reused));
    expect(r2.session.stats.reused_tokens).toBeGreaterThan(encodeChat(h1).length - 2);
    expect(r3.session.stats.truncated_tokens).toBeGreaterThan(0);
    expect(r3.session.stats.reused_tokens).toBeLessThan(r2.session.stats.reused_tokens);
    expect(r3.session.stats.computed_per_layer).toEqual(ref[2].computed);

    // The stored conversation is the client's plus the reply, and storage holds the truncated state.
    const s = await info(id);
    expect(s.messages).toEqual([...h3, { role: 'assistant', content: r3.choices[0].message.content }]);
    await abortAllDurableObjects();
    const reloaded = await info(id);
    expect(reloaded.stats.state_source).toBe('records');
    const { storage_bytes: _a, state_source: _b, ...was } = s.stats;
    const { storage_bytes: _c, state_source: _d, ...now } = reloaded.stats;
    expect(now).toEqual(was);
  });

  it('compacts the stored log into one snapshot once truncated records outweigh the live state', async () => {
    const id = await createSession();
    const seen: TurnOutcome['session']['stats'][] = [];
    // Every request rewrites the start of the history, so each turn truncates almost everything.
    for (const [k, opening] of [
      'Tom had a red hat.',
      'Sue had a blue cup.',
      'Max had a green ball.',
      'Amy had a pink bag.',
    ].entries()) {
      const res = await post('/v1/chat/completions', {
        model: MODEL,
        session_id: id,
        messages: [{ role: 'user', content: `${opening} ${TURNS[0].content}` }],
        max_tokens: 40,
        temperature: 0.8,
        seed: k,
      });
      const body = (await res.json()) as Reply['body'];
      expect(res.status, JSON.stringify(body)).toBe(200);
      seen.push(body.session.stats);
    }
    expect(seen.slice(1).every((s) => s.truncated_tokens > 0)).toBe(true);
    const k = seen.findIndex((s) => s.compacted);
    expect(k).toBeGreaterThan(0);
    expect(seen[k].cache.record_chunks).toBe(1);
    expect(seen[k].cache.record_bytes).toBe(seen[k].delta_bytes);
    expect(seen[k].cache.record_bytes).toBeLessThan(seen[k - 1].cache.record_bytes + seen[k].delta_bytes);
    const live = await info(id);
    await abortAllDurableObjects();
    const reloaded = await info(id);
    expect(reloaded.stats.state_source).toBe('records');
    for (const f of ['tokens', 'depth_histogram', 'kv_bytes', 'aux_bytes', 'record_bytes', 'record_chunks'] as const)
      expect(reloaded.stats[f]).toEqual(live.stats[f]);
  });

  it('answers 404 for an unknown session and leaves stateless chat alone', async () => {
    await expectError(
      await post('/v1/chat/completions', {
        model: MODEL,
        messages: [{ role: 'user', content: 'Hi' }],
        session_id: 'sess_' + '0'.repeat(32),
      }),
      404,
      'session_not_found',
    );
    await expectError(
      await post(
        '/v1/chat/completions',
        { model: MODEL, messages: [{ role: 'user', content: 'Hi' }] },
        { 'x-session-id': 'nope' },
      ),
      404,
      'session_not_found',
    );
    const id = await createSession();
    await expectError(
      await post('/v1/chat/completions', {
        model: 'gpt-4o',
        messages: [{ role: 'user', content: 'Hi' }],
        session_id: id,
      }),
      404,
      'model_not_found',
    );
    expect((await info(id)).stats.turns).toBe(0);
  });

  it('refuses a wrong model on /v1/sessions/:id/messages as every other route does, and takes the served one (issue 26, item 4)', async () => {
    const id = await createSession();
    await expectError(
      await post(`/v1/sessions/${id}/messages`, { model: 'gpt-4', content: 'Hi', max_tokens: 2 }),
      404,
      'model_not_found',
    );
    expect((await info(id)).messages).toEqual([]);
    const ok = await post(`/v1/sessions/${id}/messages`, { model: MODEL, content: 'Hi', max_tokens: 2 });
    expect(ok.status).toBe(200);
    expect((await info(id)).messages.length).toBe(2);
  });
});

describe('session lifecycle', () => {
  it('creates with initial messages, reports them, and deletes', async () => {
    const id = await createSession({}, { messages: [{ role: 'system', content: 'A story about a dog.' }] });
    expect(id).toMatch(/^sess_[0-9a-f]{32}$/);
    const s = await info(id);
    expect(s).toMatchObject({
      id,
      object: 'chat.session',
      model: MODEL,
      messages: [{ role: 'system', content: 'A story about a dog.' }],
      ttl_seconds: 86400,
    });
    expect(s.expires_at - s.last_active).toBe(86400);
    const r = await say(id, TURNS[0]);
    const histories = appendHistories([], [TURNS[0]], [{ role: 'system', content: 'A story about a dog.' }]);
    expect(r.body.choices[0].message.content).toBe((await reference(histories, [TURNS[0]]))[0].text);

    const del = await worker(`/v1/sessions/${id}`, { method: 'DELETE' });
    expect(await del.json()).toEqual({ id, object: 'chat.session.deleted', deleted: true });
    await expectError(await worker(`/v1/sessions/${id}`), 404, 'session_not_found');
    await expectError(await worker(`/v1/sessions/${id}`, { method: 'DELETE' }), 404, 'session_not_found');
    const tables = await runInDurableObject(stubFor('anonymous', id), (_o: ChatSession, state) =>
      state.storage.sql
        .exec(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\'`)
        .toArray(),
    );
    expect(tables).toEqual([]);
  });

  it('an alarm deletes a session idle longer than the TTL, and only then', async () => {
    const id = await createSession();
    await say(id, TURNS[0]);
    const stub = stubFor('anonymous', id);
    // Not idle yet: the alarm only moves itself.
    expect(await runDurableObjectAlarm(stub)).toBe(true);
    expect((await info(id)).messages).toHaveLength(2);
    // Idle for longer than SESSION_TTL_SECONDS: make the last activity older instead of waiting.
    await runInDurableObject(stub, (_o: ChatSession, state) => {
      state.storage.sql.exec('UPDATE session SET last_active = last_active - ?', (86400 + 1) * 1000);
    });
    expect(await runDurableObjectAlarm(stub)).toBe(true);
    await expectError(await worker(`/v1/sessions/${id}`), 404, 'session_not_found');
    const size = await runInDurableObject(
      stub,
      (_o: ChatSession, state) =>
        state.storage.sql.exec(`SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'chunks'`).one()
          .n,
    );
    expect(size).toBe(0);
  });
});

describe('isolation by API key', () => {
  const keys = { API_KEYS: 'alpha-key,beta-key' };
  const as = (key: string | null, path: string, init: RequestInit = {}) =>
    withEnv(keys, path, {
      ...init,
      headers: {
        'Content-Type': 'application/json',
        ...(key ? { Authorization: `Bearer ${key}` } : {}),
        ...(init.headers as object),
      },
    });

  it("answers 404 to another key for the same session id, and never touches the owner's session", async () => {
    const created = await as('alpha-key', '/v1/sessions', { method: 'POST', body: '{}' });
    expect(created.status).toBe(200);
    const { id } = (await created.json()) as { id: string };
    const turn = await as('alpha-key', `/v1/sessions/${id}/messages`, {
      method: 'POST',
      body: JSON.stringify(TURNS[0]),
    });
    expect(turn.status).toBe(200);
    const mine = await (await as('alpha-key', `/v1/sessions/${id}`)).json();

    await expectError(await as('beta-key', `/v1/sessions/${id}`), 404, 'session_not_found');
    await expectError(
      await as('beta-key', `/v1/sessions/${id}/messages`, { method: 'POST', body: JSON.stringify(TURNS[1]) }),
      404,
      'session_not_found',
    );
    await expectError(await as('beta-key', `/v1/sessions/${id}`, { method: 'DELETE' }), 404, 'session_not_found');
    await expectError(
      await as('beta-key', '/v1/chat/completions', {
        method: 'POST',
        body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], session_id: id }),
      }),
      404,
      'session_not_found',
    );
    await expectError(await as(null, `/v1/sessions/${id}`), 401, 'missing_api_key');
    // an open server (anonymous) does not see it either
    await expectError(await worker(`/v1/sessions/${id}`), 404, 'session_not_found');

    const still = (await (await as('alpha-key', `/v1/sessions/${id}`)).json()) as SessionInfo;
    expect(still.messages).toEqual((mine as SessionInfo).messages);
    expect(still.stats.tokens).toBe((mine as SessionInfo).stats.tokens);
  });
});

describe('concurrency and refusals', () => {
  it('refuses a second message with 409 while a turn runs, and the stored state holds only whole turns', async () => {
    const id = await createSession();
    await say(id, TURNS[0]);
    const before = await snapshot(id);
    const stub = stubFor('anonymous', id);
    // Hold a turn open mid-generation: its event callback waits until the test releases it.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let inside!: () => void;
    const entered = new Promise<void>((r) => (inside = r));
    const req: TurnRequest = {
      owner: 'anonymous',
      mode: 'append',
      messages: [{ role: 'user', content: TURNS[1].content }],
      options: TURNS[1],
      maxTokensParam: 'max_tokens',
      maxTokens: TURNS[1].max_tokens,
    };
    const held = stub.turn(id, req, async (e: TurnEvent) => {
      if (e.type === 'text') {
        inside();
        await gate;
      }
    });
    await entered;
    const second = await post(`/v1/sessions/${id}/messages`, TURNS[2]);
    expect(second.headers.get('retry-after')).toBe('1');
    await expectError(second, 409, 'session_busy');
    await expectError(await worker(`/v1/sessions/${id}`, { method: 'DELETE' }), 409, 'session_busy');
    release();
    const first = await held;
    expect(first.ok).toBe(true);
    const after = await snapshot(id);
    expect(after.messages).toEqual([
      ...before.messages,
      { role: 'user', content: TURNS[1].content },
      { role: 'assistant', content: (first as TurnOutcome).text },
    ]);

    // Two requests at once: each is answered 200 or 409, never both half-done; storage replays cleanly.
    const both = await Promise.all([
      post(`/v1/sessions/${id}/messages`, TURNS[2]),
      post(`/v1/sessions/${id}/messages`, TURNS[2]),
    ]);
    const statuses = both.map((r) => r.status).sort();
    expect([
      [200, 200],
      [200, 409],
    ]).toContainEqual(statuses);
    const done = statuses.filter((s) => s === 200).length;
    const s = await info(id);
    expect(s.messages).toHaveLength(after.messages.length + 2 * done);
    expect(s.stats.turns).toBe(2 + done);
    await abortAllDurableObjects();
    const reloaded = await info(id);
    expect(reloaded.stats.state_source).toBe('records');
    expect(reloaded.stats.tokens).toBe(s.stats.tokens);
    expect(reloaded.stats.depth_histogram).toEqual(s.stats.depth_histogram);
  });

  it('answers every bad request 4xx and leaves the session exactly as it was', async () => {
    const id = await createSession();
    const first = await say(id, TURNS[0]);
    const before = await snapshot(id);
    const msg = (body: unknown) => post(`/v1/sessions/${id}/messages`, body);
    const long = 'The big dog ran to the park and played with a ball all day long. '.repeat(40);
    const cases: Array<[string, () => Promise<Response>, number, string | null]> = [
      ['malformed JSON', () => msg('{"content": '), 400, 'invalid_json'],
      ['no content', () => msg({ max_tokens: 5 }), 400, 'missing_required_parameter'],
      ['content of the wrong type', () => msg({ content: 42 }), 400, 'invalid_value'],
      ['max_tokens 0', () => msg({ content: 'Hi', max_tokens: 0 }), 400, 'invalid_value'],
      ['max_tokens beyond the context', () => msg({ content: 'Hi', max_tokens: 4096 }), 400, 'invalid_value'],
      [
        'history + max_tokens beyond the context',
        () => msg({ content: 'Hi', max_tokens: 500 }),
        400,
        'context_length_exceeded',
      ],
      ['a message longer than the context', () => msg({ content: long }), 400, 'context_length_exceeded'],
      ['temperature out of range', () => msg({ content: 'Hi', temperature: 7 }), 400, 'invalid_value'],
      ['n = 2', () => msg({ content: 'Hi', n: 2 }), 400, 'invalid_value'],
      [
        'a schedule naming a missing layer',
        () => msg({ content: 'Hi', lazy: { schedule: '9:0.5' } }),
        400,
        'invalid_schedule',
      ],
      [
        'an unknown lazy field',
        () => msg({ content: 'Hi', lazy: { enabled: true, speed: 'max' } }),
        400,
        'unknown_parameter',
      ],
      [
        'an unsupported OpenAI option',
        () => msg({ content: 'Hi', logit_bias: { '5': 10 } }),
        400,
        'unsupported_parameter',
      ],
      ['an unknown field', () => msg({ content: 'Hi', contents: 'Hi' }), 400, 'unknown_parameter'],
      ['presence_penalty out of range', () => msg({ content: 'Hi', presence_penalty: 2.5 }), 400, 'invalid_value'],
      ['top_logprobs without logprobs', () => msg({ content: 'Hi', top_logprobs: 2 }), 400, 'invalid_value'],
      ['an assistant role', () => msg({ content: 'Hi', role: 'assistant' }), 400, 'invalid_value'],
      ['a body over the size limit', () => msg({ content: 'x'.repeat(300 * 1024) }), 413, 'request_too_large'],
      ['a wrong method', () => worker(`/v1/sessions/${id}`, { method: 'PUT' }), 405, 'method_not_allowed'],
      [
        'an unknown session',
        () => post(`/v1/sessions/sess_${'f'.repeat(32)}/messages`, { content: 'Hi' }),
        404,
        'session_not_found',
      ],
      ['a malformed session id', () => post('/v1/sessions/../messages', { content: 'Hi' }), 404, null],
      [
        'chat with a session, bad messages',
        () => post('/v1/chat/completions', { model: MODEL, session_id: id, messages: [] }),
        400,
        'invalid_value',
      ],
      [
        'chat with a session, too long',
        () =>
          post('/v1/chat/completions', { model: MODEL, session_id: id, messages: [{ role: 'user', content: long }] }),
        400,
        'context_length_exceeded',
      ],
      [
        'a streamed request refused before it starts',
        () => msg({ content: long, stream: true }),
        400,
        'context_length_exceeded',
      ],
    ];
    for (const [name, send, status, code] of cases) {
      const res = await send();
      const text = await res.text();
      expect(res.status, `${name}: ${text}`).toBe(status);
      if (code !== null) expect(JSON.parse(text).error.code, name).toBe(code);
      expect(await snapshot(id), name).toEqual(before);
    }
    // The in-memory state is untouched as well: the next turn is exactly the reference's second turn.
    const second = await say(id, TURNS[1]);
    const ref = await reference(
      appendHistories([first.body.choices[0].message.content], TURNS.slice(0, 2)),
      TURNS.slice(0, 2),
    );
    expect(second.body.choices[0].message.content).toBe(ref[1].text);
    expect(second.body.session.stats.computed_per_layer).toEqual(ref[1].computed);
  });

  it('a client that hangs up a streamed turn abandons it: nothing stored, the next turn as if it never ran', async () => {
    const id = await createSession();
    const first = await say(id, TURNS[0]);
    const before = await snapshot(id);
    const res = await post(`/v1/sessions/${id}/messages`, { ...TURNS[1], lazy: { enabled: false }, stream: true });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    await reader.read(); // the opening chunk: the turn has started
    await reader.cancel();
    // While the object notices and restores, it may still refuse with 409; retrying is what a client does.
    let second: Response;
    for (;;) {
      second = await post(`/v1/sessions/${id}/messages`, TURNS[1]);
      if (second.status !== 409) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    const body = (await second.json()) as Reply['body'];
    expect(second.status, JSON.stringify(body)).toBe(200);
    const ref = await reference(
      appendHistories([first.body.choices[0].message.content], TURNS.slice(0, 2)),
      TURNS.slice(0, 2),
    );
    expect(body.choices[0].message.content).toBe(ref[1].text);
    expect(body.session.stats.computed_per_layer).toEqual(ref[1].computed);
    const after = await snapshot(id);
    expect(after.messages).toEqual([
      ...before.messages,
      { role: 'user', content: TURNS[1].content },
      { role: 'assistant', content: ref[1].text },
    ]);
    expect(after.stats.turns).toBe(2);
  });

  it('a turn that fails mid-generation is not stored, and memory is restored exactly', async () => {
    const id = await createSession();
    const first = await say(id, TURNS[0]);
    const before = await snapshot(id);
    const stub = stubFor('anonymous', id);
    const req: TurnRequest = {
      owner: 'anonymous',
      mode: 'append',
      messages: [{ role: 'user', content: TURNS[1].content }],
      options: { ...TURNS[1], lazy: { enabled: false } },
      maxTokensParam: 'max_tokens',
      maxTokens: TURNS[1].max_tokens,
    };
    let texts = 0;
    // A dense turn revives every pruned token (deepening old tokens) before the client "goes away".
    const r = await stub.turn(id, req, async (e: TurnEvent) => {
      if (e.type === 'text' && ++texts === 3) throw new Error('client gone');
    });
    expect(r.ok).toBe(false);
    expect(texts).toBe(3);
    const after = await snapshot(id);
    expect(after.stats.state_source).toBe('records'); // memory was reloaded from storage
    expect({ ...after, stats: { ...after.stats, state_source: 'new' } }).toEqual(before);
    const second = await say(id, TURNS[1]);
    const ref = await reference(
      appendHistories([first.body.choices[0].message.content], TURNS.slice(0, 2)),
      TURNS.slice(0, 2),
    );
    expect(second.body.choices[0].message.content).toBe(ref[1].text);
    expect(second.body.session.stats.computed_per_layer).toEqual(ref[1].computed);
    expect(second.body.session.stats.revived_per_layer).toEqual(expect.any(Array));
  });
});

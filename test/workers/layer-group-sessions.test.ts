import { env } from 'cloudflare:workers';
import { runInDurableObject } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import type { SessionInfo } from '../../src/worker/session/chat-session.js';
import type { LayerGroup } from '../../src/worker/groups/layer-group-object.js';
import { frontModel } from '../../src/worker/groups/parts.js';
import { sessionGroups } from '../../src/worker/groups/session-chain.js';
import { sessionChain } from '../../src/worker/session/split.js';
import { readEvents, withEnv } from '../support/http.js';

/**
 * Chat sessions whose layers are split across LayerGroup objects (created with LAYER_GROUPS > 1):
 * the same replies and cache figures as an unsplit session, turns that commit in every group or in
 * none, and any one group's restart survived from its own storage.
 */

const SCHEDULE = 'bos,1:0.5,3:0.5';
const TURNS = [
  {
    content: 'Once upon a time, there was a little cat named Tom. Tom liked to play with a red ball in the garden.',
    max_tokens: 30,
    temperature: 0.8,
    seed: 11,
  },
  { content: 'One day, the ball rolled away into the big forest.', max_tokens: 30, temperature: 0.8, seed: 12 },
  { content: 'Tom was sad, but then he saw his friend the dog.', max_tokens: 30, temperature: 0.8, seed: 13 },
  { content: 'They looked for the ball together.', max_tokens: 30, temperature: 0.8, seed: 14 },
];

interface Reply {
  choices: { message: { content: string } }[];
  session: {
    turn: number;
    stats: {
      computed_per_layer: number[];
      revived_per_layer: number[];
      reused_tokens: number;
      cache: SessionInfo['stats'];
    };
  };
  lazy_stats: { computed_per_layer: number[] };
}

const call = (groups: number, path: string, body?: object, method = 'POST') =>
  withEnv(
    { LAYER_GROUPS: String(groups) },
    path,
    body ? { method, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) } : { method },
  );

async function create(groups: number): Promise<string> {
  const res = await call(groups, '/v1/sessions', {});
  expect(res.status, await res.clone().text()).toBe(200);
  return ((await res.json()) as { id: string }).id;
}

async function say(groups: number, id: string, t: (typeof TURNS)[number]): Promise<Reply> {
  const res = await call(groups, `/v1/sessions/${id}/messages`, { ...t, lazy: { schedule: SCHEDULE } });
  const text = await res.text();
  expect(res.status, text).toBe(200);
  return JSON.parse(text) as Reply;
}

async function stats(id: string): Promise<SessionInfo['stats']> {
  const res = await call(1, `/v1/sessions/${id}`, undefined, 'GET');
  expect(res.status).toBe(200);
  return ((await res.json()) as SessionInfo).stats;
}

/** The figures that must agree between a split and an unsplit session (storage layout aside). */
const cacheFigures = (s: SessionInfo['stats']) => ({
  tokens: s.tokens,
  depth_histogram: s.depth_histogram,
  kv_entries: s.kv_entries,
  kv_bytes: s.kv_bytes,
  aux_entries: s.aux_entries,
  aux_bytes: s.aux_bytes,
  turns: s.turns,
});
const replyFigures = (r: Reply) => ({
  text: r.choices[0].message.content,
  computed: r.session.stats.computed_per_layer,
  revived: r.session.stats.revived_per_layer,
  reused: r.session.stats.reused_tokens,
  cache: cacheFigures(r.session.stats.cache),
});

/** The groups of the session `id` (no API key: owner "anonymous"). */
function groupsOf(id: string, groups: number) {
  const obj = env.CHAT_SESSIONS.idFromName(`anonymous/${id}`).toString();
  return sessionGroups(env, obj, groups);
}

/** Restarts one group object: its memory is gone, its storage stays (what an eviction does). */
async function restart(stub: DurableObjectStub<LayerGroup>): Promise<void> {
  await runInDurableObject(stub, (_o: LayerGroup, state) => {
    try {
      state.abort('test: restart this group');
    } catch {
      // abort throws in the caller by design
    }
  }).catch(() => undefined);
}

let reference: ReturnType<typeof replyFigures>[] | null = null;
async function unsplitReference() {
  if (reference) return reference;
  const id = await create(1);
  reference = [];
  for (const t of TURNS) reference.push(replyFigures(await say(1, id, t)));
  return reference;
}

describe('sessions split into layer groups (stories260K)', () => {
  it("3 groups: every turn gives the unsplit session's reply, per-layer work and cache figures", async () => {
    const ref = await unsplitReference();
    const id = await create(3);
    for (const [k, t] of TURNS.entries()) expect(replyFigures(await say(3, id, t))).toEqual(ref[k]);
    expect(cacheFigures(await stats(id))).toEqual(ref.at(-1)!.cache);
    expect(ref.at(-1)!.cache.aux_entries).toBeGreaterThan(0);
  });

  for (const g of [0, 1, 2]) {
    it(`3 groups: group ${g} restarted between turns restores itself from its own storage`, async () => {
      const ref = await unsplitReference();
      const id = await create(3);
      const stubs = groupsOf(id, 3);
      for (const [k, t] of TURNS.entries()) {
        if (k === 2) await restart(stubs[g]);
        expect(replyFigures(await say(3, id, t))).toEqual(ref[k]);
      }
    });
  }

  for (const g of [0, 1, 2]) {
    it(`3 groups: group ${g} restarted in the middle of a turn fails that turn in every group; the next one goes on as if it never ran`, async () => {
      const ref = await unsplitReference();
      const id = await create(3);
      const stubs = groupsOf(id, 3);
      expect(replyFigures(await say(3, id, TURNS[0]))).toEqual(ref[0]);
      const before = await stats(id);
      // The session awaits each streamed event before its next step: restart the group at the first text.
      let restarted = false;
      const session = env.CHAT_SESSIONS.get(env.CHAT_SESSIONS.idFromName(`anonymous/${id}`));
      const t = TURNS[1];
      const r = await session.turn(
        id,
        {
          owner: 'anonymous',
          mode: 'append',
          messages: [{ role: 'user', content: t.content }],
          options: { temperature: t.temperature, seed: t.seed, lazy: { schedule: SCHEDULE } },
          maxTokensParam: 'max_tokens',
          maxTokens: t.max_tokens,
        },
        async (e) => {
          if (e.type === 'text' && !restarted) {
            restarted = true;
            await restart(stubs[g]);
          }
          return true;
        },
      );
      expect(restarted).toBe(true);
      expect(r.ok).toBe(false);
      expect(cacheFigures(await stats(id))).toEqual(cacheFigures(before));
      expect(replyFigures(await say(3, id, TURNS[1]))).toEqual(ref[1]);
      expect(replyFigures(await say(3, id, TURNS[2]))).toEqual(ref[2]);
    });
  }

  for (const g of [0, 2]) {
    it(`3 groups: a damaged chunk in group ${g}'s storage is never served: the session rebuilds every group from its turn records, as an unsplit session rebuilds its log`, async () => {
      const ref = await unsplitReference();
      const id = await create(3);
      const stubs = groupsOf(id, 3);
      for (const t of TURNS.slice(0, 2)) await say(3, id, t);
      // One byte flipped in the group's first chunk, then the group and the session restarted (their memory gone).
      await runInDurableObject(stubs[g], (_o: LayerGroup, state) => {
        const row = state.storage.sql.exec('SELECT bytes FROM group_chunks WHERE seq = 0').one();
        const bytes = new Uint8Array(row.bytes as ArrayBuffer).slice();
        bytes[bytes.length >> 1] ^= 0xff;
        state.storage.sql.exec('UPDATE group_chunks SET bytes = ? WHERE seq = 0', bytes.buffer);
      });
      await restart(stubs[g]);
      const session = env.CHAT_SESSIONS.get(env.CHAT_SESSIONS.idFromName(`anonymous/${id}`));
      await runInDurableObject(session, (_o, state) => {
        try {
          state.abort('test: restart the session');
        } catch {
          // abort throws in the caller by design
        }
      }).catch(() => undefined);
      const after = await stats(id);
      expect(after.state_source).toBe('rebuilt');
      expect(after.recoveries).toBe(1);
      expect(after.last_recovery).toMatch(/rebuilt from turn records/);
      expect(cacheFigures(after)).toEqual(ref[1].cache);
      for (const k of [2, 3]) expect(replyFigures(await say(3, id, TURNS[k]))).toEqual(ref[k]);
    });
  }

  it('3 groups: a turn every group stored as pending but the session never committed (a crash in between) is dropped by every group', async () => {
    const ref = await unsplitReference();
    const id = await create(3);
    expect(replyFigures(await say(3, id, TURNS[0]))).toEqual(ref[0]);
    const before = await stats(id);
    // What a ChatSession that died right after `prepare` leaves: each group holds turn 1's chunks, pending.
    const chain = sessionChain(
      env,
      env.CHAT_SESSIONS.idFromName(`anonymous/${id}`).toString(),
      { groups: 3, heads: 0 },
      (await frontModel(env)).config,
    );
    const { runner, id: attempt } = chain.attempt(1);
    const seq = chain.frontState();
    seq.append(new Array(before.tokens).fill(0));
    await runner.runner(seq, [5, 6, 7, 8], { schedule: null });
    await runner.runner(seq, [9], { schedule: null });
    expect((await chain.prepare(1, attempt)).every((b) => b > 0)).toBe(true);
    expect(cacheFigures(await stats(id))).toEqual(cacheFigures(before));
    expect(replyFigures(await say(3, id, TURNS[1]))).toEqual(ref[1]);
    expect(replyFigures(await say(3, id, TURNS[2]))).toEqual(ref[2]);
  });

  it('2 groups: chat completions whose history diverges truncate every group to the common prefix, as unsplit', async () => {
    const chatTurn = async (groups: number, id: string, messages: { role: string; content: string }[]) => {
      const res = await call(groups, '/v1/chat/completions', {
        model: env.MODEL_NAME,
        session_id: id,
        messages,
        max_tokens: 20,
        temperature: 0,
        lazy: { schedule: SCHEDULE },
      });
      const text = await res.text();
      expect(res.status, text).toBe(200);
      return JSON.parse(text) as Reply;
    };
    const histories = [
      [{ role: 'user', content: TURNS[0].content }],
      [
        { role: 'user', content: TURNS[0].content },
        { role: 'assistant', content: 'The cat ran.' },
        { role: 'user', content: TURNS[1].content },
      ],
      [
        { role: 'user', content: TURNS[0].content },
        { role: 'assistant', content: 'The dog sat.' },
        { role: 'user', content: TURNS[2].content },
      ],
    ];
    const [a, b] = [await create(1), await create(2)];
    for (const h of histories) {
      const [ra, rb] = [await chatTurn(1, a, h), await chatTurn(2, b, h)];
      expect(replyFigures(rb)).toEqual(replyFigures(ra));
    }
    expect(cacheFigures(await stats(b))).toEqual(cacheFigures(await stats(a)));
  });

  it("2 layer groups and the classifier in an object of its own: the unsplit session's replies, and a restart of that object survived", async () => {
    const ref = await unsplitReference();
    const res = await withEnv({ LAYER_GROUPS: '2', HEAD_GROUPS: '1' }, '/v1/sessions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: '{}',
    });
    const id = ((await res.json()) as { id: string }).id;
    const obj = env.CHAT_SESSIONS.idFromName(`anonymous/${id}`).toString();
    for (const [k, t] of TURNS.entries()) {
      if (k === 2) await restart(sessionGroups(env, obj, 2, 1)[2]);
      expect(replyFigures(await say(2, id, t))).toEqual(ref[k]);
    }
  });

  it("2 groups, created with PREFILL_STEP_TOKENS 7: dense turns go through the groups in steps of at most 7 tokens, with the unsplit session's replies and per-layer work; a streamed turn sends an SSE comment as each group of each step is done", async () => {
    const DENSE = TURNS.map((t) => ({ ...t, temperature: 0, lazy: { enabled: false } }));
    const turn = async (vars: Record<string, string>, id: string, t: object) => {
      const res = await withEnv(vars, `/v1/sessions/${id}/messages`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(t),
      });
      const text = await res.text();
      expect(res.status, text).toBe(200);
      return JSON.parse(text) as Reply & {
        usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
        lazy_stats: { split?: { prefill_steps: number } };
      };
    };
    const made = async (vars: Record<string, string>) =>
      (
        (await (
          await withEnv(vars, '/v1/sessions', {
            method: 'POST',
            headers: { 'Content-Type': 'application/json' },
            body: '{}',
          })
        ).json()) as { id: string }
      ).id;
    const whole = await made({ LAYER_GROUPS: '1' });
    // The step size is the creating Worker's: the turns below run without it, and the ChatSession's own env says 0.
    const split = await made({ LAYER_GROUPS: '2', PREFILL_STEP_TOKENS: '7' });
    for (const t of DENSE.slice(0, 3)) {
      const [a, b] = [await turn({ LAYER_GROUPS: '1' }, whole, t), await turn({ LAYER_GROUPS: '2' }, split, t)];
      expect(replyFigures(b)).toEqual(replyFigures(a));
      const fresh = b.usage.prompt_tokens - b.usage.prompt_tokens_details.cached_tokens;
      expect(fresh).toBeGreaterThan(7);
      expect(b.lazy_stats.split!.prefill_steps).toBe(Math.ceil(fresh / 7));
    }
    expect(cacheFigures(await stats(split))).toEqual(cacheFigures(await stats(whole)));

    // streamed, a comment after each group's answer in each step (STREAM_KEEPALIVE_MS 0: at every one), all before the first text
    const ref = await turn({ LAYER_GROUPS: '1' }, whole, DENSE[3]);
    const res = await withEnv({ LAYER_GROUPS: '2', STREAM_KEEPALIVE_MS: '0' }, `/v1/sessions/${split}/messages`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ ...DENSE[3], stream: true }),
    });
    expect(res.status).toBe(200);
    const { events, comments } = await readEvents(res);
    const chunks = events.slice(0, -1).map(
      (e) =>
        JSON.parse(e) as {
          choices: { delta: { content?: string } }[];
          lazy_stats?: { split?: { prefill_steps: number } };
        },
    );
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(ref.choices[0].message.content);
    const steps = chunks.at(-1)!.lazy_stats!.split!.prefill_steps;
    expect(steps).toBe(Math.ceil((ref.usage.prompt_tokens - ref.usage.prompt_tokens_details.cached_tokens) / 7));
    // one as each group of each step is done
    expect(comments.length).toBe(steps * 2);
    expect(comments.every((c) => c.after === 1)).toBe(true); // after the assistant-role chunk, before any text
  });

  it('2 groups: a deleted session erases its groups', async () => {
    const id = await create(2);
    await say(2, id, TURNS[0]);
    const del = await call(2, `/v1/sessions/${id}`, undefined, 'DELETE');
    expect(del.status).toBe(200);
    for (const stub of groupsOf(id, 2)) {
      await runInDurableObject(stub, (_o: LayerGroup, state) => {
        expect(
          state.storage.sql.exec(`SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'group_chunks'`).one().n,
        ).toBe(0);
      });
    }
  });
});

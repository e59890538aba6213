/**
 * Idempotency-Key on session turns (issue 26, item 7): a request sent again with the key of a
 * committed turn gets that turn back, streamed or not, and the session does not run a second one;
 * a key reused for another request is a 422 that changes nothing; a new key runs a new turn.
 */
import { describe, expect, it } from 'vitest';
import { MODEL, post, readEvents, worker } from '../support/http.js';

interface Turn {
  choices: { message: { content: string } }[];
  session: { id: string; turn: number; replayed?: boolean };
}

async function session(): Promise<string> {
  return ((await (await post('/v1/sessions', {})).json()) as { id: string }).id;
}

/** What the session holds: its conversation and cache figures (not its activity times: reading a session counts as activity). */
async function stored(
  id: string,
): Promise<{ messages: { role: string; content: string }[]; stats: { tokens: number } }> {
  const { messages, stats } = (await (await worker(`/v1/sessions/${id}`)).json()) as {
    messages: { role: string; content: string }[];
    stats: { tokens: number };
  };
  return { messages, stats };
}

/** seed unset: a turn run twice would sample differently, so a replay shows as the same text */
const BODY = { content: 'Tell me about a cat.', max_tokens: 24, temperature: 1 };

async function send(id: string, key: string | null, body: object = BODY) {
  return post(`/v1/sessions/${id}/messages`, body, key === null ? {} : { 'Idempotency-Key': key });
}

describe('Idempotency-Key on session turns', () => {
  it('a retried key returns the stored turn instead of running a new one', async () => {
    const id = await session();
    const first = await send(id, 'key-1');
    expect(first.status).toBe(200);
    const a = (await first.json()) as Turn;
    expect(a.session.replayed).toBeUndefined();
    const after = await stored(id);

    const again = await send(id, 'key-1');
    expect(again.status).toBe(200);
    const b = (await again.json()) as Turn;
    expect(b.choices[0].message.content).toBe(a.choices[0].message.content);
    expect(b.session.turn).toBe(a.session.turn);
    expect(b.session.replayed).toBe(true);
    expect(await stored(id)).toEqual(after); // no second turn

    // the same retry, streamed: the stored text as one delta, then [DONE]
    const streamed = await send(id, 'key-1', { ...BODY, stream: true });
    expect(streamed.status).toBe(200);
    const { events } = await readEvents(streamed);
    expect(events.at(-1)).toBe('[DONE]');
    const text = events
      .slice(0, -1)
      .map((e) => (JSON.parse(e) as { choices: { delta: { content?: string } }[] }).choices[0]?.delta.content ?? '')
      .join('');
    expect(text).toBe(a.choices[0].message.content);
    expect(await stored(id)).toEqual(after);

    // a new key is a new turn
    const next = (await (await send(id, 'key-2')).json()) as Turn;
    expect(next.session.turn).toBe(a.session.turn + 1);
    expect((await stored(id)).messages).toHaveLength(after.messages.length + 2);
  });

  it('a key sent with another request is refused and changes nothing', async () => {
    const id = await session();
    expect((await send(id, 'k')).status).toBe(200);
    const before = await stored(id);
    const res = await send(id, 'k', { ...BODY, content: 'Something else.' });
    expect(res.status).toBe(422);
    expect(((await res.json()) as { error: object }).error).toMatchObject({
      code: 'idempotency_key_reused',
      param: 'Idempotency-Key',
      type: 'invalid_request_error',
    });
    expect(await stored(id)).toEqual(before);
  });

  it('works on /v1/chat/completions with a session, and refuses a malformed key', async () => {
    const id = await session();
    const body = {
      model: MODEL,
      session_id: id,
      messages: [{ role: 'user', content: 'Hi there.' }],
      max_tokens: 16,
      temperature: 1,
    };
    const a = (await (await post('/v1/chat/completions', body, { 'Idempotency-Key': 'chat-1' })).json()) as Turn;
    const b = (await (await post('/v1/chat/completions', body, { 'Idempotency-Key': 'chat-1' })).json()) as Turn;
    expect(b.choices[0].message.content).toBe(a.choices[0].message.content);
    expect(b.session.replayed).toBe(true);
    const before = await stored(id);
    for (const key of ['', 'x'.repeat(256), 'with space']) {
      const res = await send(id, key);
      expect(res.status, JSON.stringify(key)).toBe(400);
      expect(((await res.json()) as { error: { param: string } }).error.param).toBe('Idempotency-Key');
    }
    expect(await stored(id)).toEqual(before);
  });
});

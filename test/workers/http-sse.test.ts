import { afterEach, describe, expect, it, vi } from 'vitest';
import { EngineError } from '../../src/engine/errors.js';
import { sseResponse } from '../../src/worker/http/sse.js';
import { readEvents } from '../support/http.js';

afterEach(() => vi.restoreAllMocks());

describe('sseResponse', () => {
  it('frames each event as one data line and ends with [DONE]', async () => {
    const res = sseResponse(async (send) => {
      await send({ a: 1 });
      await send({ text: 'two\nlines' });
    });
    expect(res.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    expect(res.headers.get('cache-control')).toBe('no-cache');
    expect((await readEvents(res)).events).toEqual(['{"a":1}', '{"text":"two\\nlines"}', '[DONE]']);
  });

  it('turns a fault after the headers went out into a last error event, logged, without [DONE]', async () => {
    const logged = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    const res = sseResponse(async (send) => {
      await send({ a: 1 });
      throw new Error('shard exploded');
    });
    expect(res.status).toBe(200);
    const { events } = await readEvents(res);
    expect(events).toHaveLength(2);
    expect(JSON.parse(events[1])).toEqual({
      error: {
        message: 'The server had an error while processing your request.',
        type: 'server_error',
        param: null,
        code: 'internal_error',
      },
    });
    expect(logged).toHaveBeenCalledWith(
      expect.stringContaining('streamed generation failed'),
      expect.stringContaining('shard exploded'),
    );
  });

  it('passes a client mistake found mid-stream on as its 4xx error body, unlogged', async () => {
    const logged = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    const res = sseResponse(async () => {
      throw new EngineError('bad schedule', 'invalid_schedule', 'schedule');
    });
    const { events } = await readEvents(res);
    expect(events.map((e) => JSON.parse(e))).toEqual([
      {
        error: { message: 'bad schedule', type: 'invalid_request_error', param: 'schedule', code: 'invalid_schedule' },
      },
    ]);
    expect(logged).not.toHaveBeenCalled();
  });

  it('stops the producer when the client hangs up', async () => {
    let sent = 0;
    let stopped: unknown;
    const done = new Promise<void>((resolve) => {
      const res = sseResponse(async (send) => {
        try {
          for (;;) {
            await send({ n: sent });
            sent++;
          }
        } catch (e) {
          stopped = e;
          resolve();
          throw e;
        }
      });
      const reader = res.body!.getReader();
      void reader.read().then(() => reader.cancel());
    });
    await done;
    expect((stopped as Error).name).toBe('ClientGone');
    expect(sent).toBeLessThan(5);
  });
});

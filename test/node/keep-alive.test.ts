import { describe, expect, it } from 'vitest';
import { configOf } from '../../src/worker/config.js';
import { onceEvery, prefillKeepAlive } from '../../src/worker/job/keep-alive.js';

const keepAliveMs = (vars: { STREAM_KEEPALIVE_MS?: string }) => configOf({ MODEL_NAME: 'm', ...vars }).keepAliveMs;

/** The rate limit of the comments a streamed prefill sends (src/worker/job/keep-alive.ts), on a clock the test moves. */
describe('prefill keep-alive', () => {
  it('is due at most once per interval, and not before an interval has passed since the stream opened', () => {
    let t = 1000;
    const due = onceEvery(5000, () => t);
    const at = (ms: number) => ((t = ms), due());
    expect([at(1000), at(4999), at(5999)]).toEqual([false, false, false]);
    expect([at(6000), at(6001), at(10_999), at(11_000), at(11_000)]).toEqual([true, false, false, true, false]);
  });

  it('sends a comment only when one is due, and yields to the event loop at every call', async () => {
    let t = 0;
    const sent: number[] = [];
    const progress = prefillKeepAlive(
      async () => sent.push(t),
      3000,
      () => t,
    );
    let timers = 0;
    const timer = setInterval(() => timers++, 0);
    for (t = 0; t <= 10_000; t += 500) await progress();
    clearInterval(timer);
    expect(sent).toEqual([3000, 6000, 9000]);
    expect(timers).toBeGreaterThan(0);
  });

  it('reads STREAM_KEEPALIVE_MS: unset is 5 s, 0 every call, anything else a deployment mistake', () => {
    expect(keepAliveMs({})).toBe(5000);
    expect(keepAliveMs({ STREAM_KEEPALIVE_MS: '0' })).toBe(0);
    expect(keepAliveMs({ STREAM_KEEPALIVE_MS: '2500' })).toBe(2500);
    expect(() => keepAliveMs({ STREAM_KEEPALIVE_MS: '-1' })).toThrow(/STREAM_KEEPALIVE_MS/);
    expect(() => keepAliveMs({ STREAM_KEEPALIVE_MS: 'soon' })).toThrow(/STREAM_KEEPALIVE_MS/);
  });
});

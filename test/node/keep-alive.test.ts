import { describe, expect, it, vi } from 'vitest';
import { configOf } from '../../src/worker/config.js';
import { awaitWithProgress, onceEvery, prefillKeepAlive, PROGRESS_MS } from '../../src/worker/job/keep-alive.js';

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

/** A split step is one long call down the chain: its progress hook runs while it is awaited (src/worker/groups/chain.ts). */
describe('progress while a long call is awaited', () => {
  const slowAnswer = (ms: number, value: string) => new Promise<string>((r) => setTimeout(() => r(value), ms));

  it('calls the hook every PROGRESS_MS while waiting and once when the answer is in', async () => {
    vi.useFakeTimers();
    try {
      const at: number[] = [];
      const t0 = Date.now();
      const done = awaitWithProgress(slowAnswer(3.5 * PROGRESS_MS, 'logits'), () => void at.push(Date.now() - t0));
      await vi.advanceTimersByTimeAsync(4 * PROGRESS_MS);
      expect(await done).toBe('logits');
      expect(at).toEqual([1, 2, 3, 3.5].map((k) => k * PROGRESS_MS));
      // and never after it returned
      await vi.advanceTimersByTimeAsync(3 * PROGRESS_MS);
      expect(at).toHaveLength(4);
    } finally {
      vi.useRealTimers();
    }
  });

  it("throws the hook's first error once the answer is in (the client left: the job stops after this step)", async () => {
    vi.useFakeTimers();
    try {
      let calls = 0;
      const done = awaitWithProgress(slowAnswer(2.5 * PROGRESS_MS, 'logits'), async () => {
        calls++;
        throw new Error(`client gone ${calls}`);
      });
      const settled = done.then(
        () => 'resolved',
        (e: Error) => e.message,
      );
      await vi.advanceTimersByTimeAsync(3 * PROGRESS_MS);
      expect(await settled).toBe('client gone 1');
      expect(calls).toBe(3); // at 1 and 2 periods, and at the answer
    } finally {
      vi.useRealTimers();
    }
  });

  it('without a hook, answers as the call does', async () => {
    await expect(awaitWithProgress(Promise.resolve(7))).resolves.toBe(7);
    await expect(awaitWithProgress(Promise.reject(new Error('lease_lost')))).rejects.toThrow('lease_lost');
  });
});

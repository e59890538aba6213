/**
 * Keeping a streamed request's connection alive while it prefills. A long prefill sends nothing
 * for minutes (an 8k-token split prefill took 300-450 s), and clients and proxies drop a silent
 * stream: undici, Node's fetch, ends a body after 300 s without a byte. While a streamed request
 * prefills, an SSE comment line (`: ...`, skipped by every SSE client, the openai SDK included)
 * goes out at most once per STREAM_KEEPALIVE_MS, the first that long after the stream opened: a
 * request that answers sooner sends none.
 */
import { yieldToEventLoop } from './plan.js';

/** True at most once per `ms`, and not before `ms` have passed since it was made. */
export function onceEvery(ms: number, now: () => number = Date.now): () => boolean {
  let last = now();
  return () => {
    const t = now();
    if (t - last < ms) return false;
    last = t;
    return true;
  };
}

/**
 * The prefill's progress callback (GenerateOptions.onPrefillProgress) for a streamed request:
 * `send` (a comment) when one is due, and a zero-delay timer every time, so that the comment is
 * flushed and, deployed, the clock moves: a Worker's clock advances on events (I/O, timers), not
 * while the unsplit model computes layer after layer, and without them no comment would be due.
 */
export function prefillKeepAlive(send: () => Promise<unknown>, ms: number, now?: () => number): () => Promise<void> {
  const due = onceEvery(ms, now);
  return async () => {
    if (due()) await send();
    await yieldToEventLoop();
  };
}

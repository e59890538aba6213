/** Helpers for driving the Worker over HTTP inside workerd. */
import { env, exports } from 'cloudflare:workers';
import { createExecutionContext } from 'cloudflare:test';
import { app } from '../../src/worker/http/app.js';

export const MODEL = env.MODEL_NAME;
export const BASE = 'http://localhost';

/** A request through the real Worker entrypoint (the default export of src/worker/index.ts). */
export function worker(path: string, init?: RequestInit): Promise<Response> {
  return exports.default.fetch(new Request(`${BASE}${path}`, init));
}

export function post(path: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return worker(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

/**
 * The same app with some bindings replaced (API_KEYS, REQUEST_BUDGET_MS, ...), as a deployment
 * would set them. The execution context is not awaited: a stream's producer, registered with
 * waitUntil, only finishes once the caller has read the body.
 */
export async function withEnv(overrides: Partial<Cloudflare.Env>, path: string, init?: RequestInit): Promise<Response> {
  return app.fetch(new Request(`${BASE}${path}`, init), { ...env, ...overrides }, createExecutionContext());
}

/**
 * Reads a server-sent-event stream chunk by chunk as it arrives and returns each event's data
 * field in order; checks the framing (every event is exactly one `data: ` line and a blank line,
 * or a comment: one `: ` line and a blank line, returned apart with the count of events before it).
 */
export async function readEvents(
  res: Response,
): Promise<{ events: string[]; reads: number; comments: { text: string; after: number }[] }> {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let reads = 0;
  const events: string[] = [];
  const comments: { text: string; after: number }[] = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    reads++;
    buf += value;
    let end: number;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      if (event.startsWith(': ') && !event.includes('\n')) {
        comments.push({ text: event.slice(2), after: events.length });
        continue;
      }
      if (!event.startsWith('data: ') || event.includes('\n'))
        throw new Error(`malformed event: ${JSON.stringify(event)}`);
      events.push(event.slice('data: '.length));
    }
  }
  if (buf !== '') throw new Error(`stream ended inside an event: ${JSON.stringify(buf)}`);
  return { events, reads, comments };
}

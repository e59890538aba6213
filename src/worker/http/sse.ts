import { ClientGone, logFault, toApiError } from './errors.js';

export { ClientGone };

/** Sends one server-sent event carrying `data` as JSON; rejects with ClientGone once the client has hung up. */
export type SendEvent = (data: unknown) => Promise<void>;
/** Sends an SSE comment line (`: text`), which clients skip: it keeps a silent stream open (keep-alive.ts). */
export type SendComment = (text: string) => Promise<void>;

export const SSE_HEADERS = {
  'Content-Type': 'text/event-stream; charset=utf-8',
  'Cache-Control': 'no-cache',
  'X-Accel-Buffering': 'no',
};

/**
 * A streaming response in OpenAI's server-sent-events format: one `data: {json}\n\n` per event,
 * then `data: [DONE]\n\n`. The response is returned at once and `produce` runs behind it; each
 * event is written as soon as it is sent and the write is awaited, so the runtime flushes it to the
 * client before the next token is computed (and a slow reader slows generation instead of
 * queueing text in memory). An error after the headers went out cannot change the status any more:
 * it becomes a final `data: {"error": {...}}` event (the openai SDK raises it as an APIError).
 *
 * `gone` is aborted as soon as the client hangs up, even between writes: a producer that computes
 * tokens without sending (text held back for a stop string) checks it, so no work outlives the reader.
 * A hang-up is a normal event, never logged. `comment` writes an SSE comment line, which carries
 * no event: what a long prefill sends to keep the connection open (keep-alive.ts).
 */
export function sseResponse(
  produce: (send: SendEvent, gone: AbortSignal, comment: SendComment) => Promise<void>,
  waitUntil?: (p: Promise<unknown>) => void,
): Response {
  // Not a JS TransformStream: when a client hangs up at some moments (about one time in three in
  // wrangler dev, issue 26), workerd drops the pump that reads the response body without
  // cancelling a JS-backed readable. The pending write then never settles, `closed` never rejects
  // and request.signal never aborts, so a session stayed busy and a group chain held for good.
  // The runtime's native pipe errors its writable whenever its readable end goes away, however it
  // goes (scripts/probes/runtime-worker shows both with a minimal Worker).
  const { readable, writable } = new IdentityTransformStream();
  const writer = writable.getWriter();
  const encoder = new TextEncoder();
  const hangUp = new AbortController();
  // The writable side errors when the reader cancels: that is the hang-up, whenever it happens.
  writer.closed.catch(() => hangUp.abort(new ClientGone('the client closed the stream')));
  const write = async (text: string) => {
    if (hangUp.signal.aborted) throw new ClientGone('the client closed the stream');
    try {
      await writer.write(encoder.encode(text));
    } catch {
      hangUp.abort(new ClientGone('the client closed the stream'));
      throw new ClientGone('the client closed the stream');
    }
  };
  const run = (async () => {
    try {
      // A comment is one line: a line break in it would start a field of an event.
      await produce(
        (data) => write(`data: ${JSON.stringify(data)}\n\n`),
        hangUp.signal,
        (text) => write(`: ${text.replace(/[\r\n]+/g, ' ')}\n\n`),
      );
      await write('data: [DONE]\n\n');
      await writer.close();
    } catch (e) {
      if (e instanceof ClientGone || hangUp.signal.aborted) return;
      const err = toApiError(e);
      logFault(err, e, 'streamed generation');
      try {
        await write(`data: ${JSON.stringify(err.body())}\n\n`);
        await writer.close();
      } catch {
        // the client is gone as well
      }
    }
  })();
  waitUntil?.(run);
  return new Response(readable, { headers: SSE_HEADERS });
}

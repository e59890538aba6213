/**
 * A minimal Worker, nothing of lazy-edge in it, that shows two behaviours of the local runtime
 * (workerd under wrangler) that the served Worker works around (docs/RUNTIME-PROBES.md, issue 26):
 *
 *   GET  /stream?pipe=js|native&gap=MS  an endless SSE-like stream, one line per awaited write, MS apart
 *   GET  /streams                how each stream ended: "errored" (the runtime told the writer the
 *                                reader was gone) or still "pending" (a write that never settles)
 *   POST /refuse?how=HOW          413 for any body, after doing HOW with it: ignore it, cancel it
 *                                unread, read 256 KiB then cancel it (partial), then leave it
 *                                (partial-leave) or release it (partial-release), or read it all (drain)
 *   GET  /ok                     200
 *
 * scripts/runtime-probe.ts serves it and drives it with raw sockets.
 */

interface StreamRecord {
  pipe: string;
  gap: number;
  writes: number;
  state: 'writing' | 'pending' | 'errored';
}

const streams: StreamRecord[] = [];

function stream(pipe: string, gap: number, ctx: ExecutionContext): Response {
  const { readable, writable } =
    pipe === 'native' ? new IdentityTransformStream() : new TransformStream<Uint8Array, Uint8Array>();
  const writer = writable.getWriter();
  const rec: StreamRecord = { pipe, gap, writes: 0, state: 'writing' };
  streams.push(rec);
  const line = new TextEncoder().encode(`data: ${'x'.repeat(64)}\n\n`);
  ctx.waitUntil(
    (async () => {
      try {
        for (;;) {
          rec.state = 'pending';
          await writer.write(line);
          rec.state = 'writing';
          rec.writes++;
          await new Promise((r) => setTimeout(r, gap));
        }
      } catch {
        rec.state = 'errored';
      }
    })(),
  );
  return new Response(readable, { headers: { 'content-type': 'text/event-stream' } });
}

async function refuse(req: Request, how: string): Promise<Response> {
  const body = req.body;
  if (body && how === 'cancel') await body.cancel();
  if (body && how.startsWith('partial')) {
    const reader = body.getReader();
    let n = 0;
    while (n <= 262_144) {
      const { done, value } = await reader.read();
      if (done) break;
      n += value.byteLength;
    }
    if (how === 'partial') await reader.cancel();
    if (how === 'partial-release') reader.releaseLock();
  }
  if (body && how === 'drain') {
    const reader = body.getReader();
    while (!(await reader.read()).done);
  }
  return new Response('too large\n', { status: 413 });
}

export default {
  async fetch(req: Request, _env: unknown, ctx: ExecutionContext): Promise<Response> {
    const url = new URL(req.url);
    if (url.pathname === '/stream')
      return stream(url.searchParams.get('pipe') ?? 'js', Number(url.searchParams.get('gap') ?? 1), ctx);
    if (url.pathname === '/streams') return Response.json(streams);
    if (url.pathname === '/refuse') return refuse(req, url.searchParams.get('how') ?? 'ignore');
    return new Response('ok\n');
  },
};

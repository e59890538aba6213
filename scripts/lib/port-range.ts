/** A loopback port that was free a moment ago, within [from, to] (the ports a test or script may use on a shared machine). */
import { createServer } from 'node:net';

function tryPort(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

export async function freePortIn(from: number, to: number, skip: readonly number[] = []): Promise<number> {
  for (let p = from; p <= to; p++) if (!skip.includes(p) && (await tryPort(p))) return p;
  throw new Error(`no free port on 127.0.0.1 from ${from} to ${to}`);
}

/**
 * The Worker served locally (scripts/serve.ts) from Node tests: in its own process group, so that
 * wrangler and its workerd children stop together when the test kills that group (by the PID it
 * spawned, nothing else). Ready once /healthz answers, i.e. the model is loaded.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { killGroup, spawnServe } from '../../scripts/lib/wrangler-dev.js';
import { freeLoopbackPort } from '../../scripts/lib/node-env.js';

export { killGroup };

export interface DevServer {
  child: ChildProcess;
  base: string;
  log: string;
}

export const exited = (child: ChildProcess) =>
  new Promise<void>((r) =>
    child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', () => r()),
  );

/**
 * Serves the Worker on 127.0.0.1:<free> with `args` (scripts/serve.ts flags) and its output in `log`;
 * `started` collects the child so that the caller's afterAll can kill it whatever happens.
 */
export async function startWranglerDev(args: string[], log: string, started: ChildProcess[]): Promise<DevServer> {
  const port = await freeLoopbackPort();
  const child = spawnServe(['--ip', '127.0.0.1', '--port', String(port), ...args], log);
  started.push(child);
  const base = `http://127.0.0.1:${port}`;
  // Ready when /healthz answers (the model is loaded by then); fail at once if the server exits.
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(
        `the local server exited (${child.exitCode ?? child.signalCode}); log:\n${readFileSync(log, 'utf8')}`,
      );
    try {
      const res = await fetch(`${base}/healthz`);
      if (res.ok) return { child, base, log };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

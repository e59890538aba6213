/**
 * Spawning `wrangler dev` from Node tests: in its own process group, so that wrangler and its
 * workerd children stop together when the test kills that group (by the PID it spawned, nothing
 * else). Ready once /healthz answers, i.e. the model is loaded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { freeLoopbackPort, REPO_ROOT } from '../../scripts/lib/node-env.js';

export interface DevServer {
  child: ChildProcess;
  base: string;
  log: string;
}

export function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
    try {
      process.kill(-child.pid, signal);
    } catch {
      // already gone
    }
  }
}

export const exited = (child: ChildProcess) => new Promise<void>((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', () => r())));

/**
 * Starts `wrangler dev --ip 127.0.0.1 --port <free> ...args` with its output in `log`; `started`
 * collects the child so that the caller's afterAll can kill it whatever happens.
 */
export async function startWranglerDev(args: string[], log: string, started: ChildProcess[]): Promise<DevServer> {
  const port = await freeLoopbackPort();
  const out = openSync(log, 'w');
  const child = spawn(join(REPO_ROOT, 'node_modules/.bin/wrangler'), ['dev', '--ip', '127.0.0.1', '--port', String(port), ...args], {
    cwd: REPO_ROOT,
    detached: true, // its own process group: wrangler and its workerd processes stop together
    stdio: ['ignore', out, out],
    env: { ...process.env, WRANGLER_SEND_METRICS: 'false', WRANGLER_HIDE_BANNER: 'true', CLOUDFLARE_CF_FETCH_ENABLED: 'false', NO_COLOR: '1' },
  });
  started.push(child);
  const base = `http://127.0.0.1:${port}`;
  // Ready when /healthz answers (the model is loaded by then); fail at once if wrangler exits.
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`wrangler dev exited (${child.exitCode ?? child.signalCode}); log:\n${readFileSync(log, 'utf8')}`);
    try {
      const res = await fetch(`${base}/healthz`);
      if (res.ok) return { child, base, log };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

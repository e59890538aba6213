/**
 * A Worker run in `wrangler dev` on 127.0.0.1 for measuring from outside: started in its own process
 * group (so wrangler and its workerd stop together), awaited until a URL answers, and its workerd
 * processes found for /proc readings. Used by the benchmark and the memory measurement.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { freeLoopbackPort, REPO_ROOT } from './node-env.js';
import { descendants, processName } from './proc.js';

/** The workerd processes below `root` (wrangler runs an entry proxy and the Worker's runtime). */
export function findWorkerds(root: number): number[] {
  return descendants(root).filter((pid) => processName(pid) === 'workerd');
}

/** VmRSS and VmHWM (peak resident set) of a process, in bytes; NaN when unreadable. */
export function residentBytes(pid: number): { rss: number; hwm: number } {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
    return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
  } catch {
    return { rss: NaN, hwm: NaN };
  }
}

export async function waitReady(url: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (child.exitCode !== null) throw new Error(`wrangler dev exited with code ${child.exitCode}`);
    try {
      const res = await fetch(url);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`wrangler dev did not answer ${url} within ${timeoutMs / 1000} s`);
}

export interface WranglerDev {
  base: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** Starts `wrangler dev --config <config>` on a free loopback port; `vars` become --var flags. */
export async function startWranglerDev(config: string, logFile: string, vars: Record<string, string> = {}): Promise<WranglerDev> {
  const port = await freeLoopbackPort();
  const out = openSync(logFile, 'w');
  const varArgs = Object.entries(vars).flatMap(([k, v]) => ['--var', `${k}:${v}`]);
  const child = spawn(process.execPath, [join(REPO_ROOT, 'node_modules/wrangler/bin/wrangler.js'), 'dev', '--config', config, '--ip', '127.0.0.1', '--port', String(port), ...varArgs], {
    cwd: REPO_ROOT,
    detached: true,
    stdio: ['ignore', out, out],
    env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CLOUDFLARE_CF_FETCH_ENABLED: 'false', NO_COLOR: '1' },
  });
  const kill = () => {
    if (child.pid && child.exitCode === null) {
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
  };
  process.once('exit', kill);
  return {
    base: `http://127.0.0.1:${port}`,
    child,
    async stop() {
      kill();
      await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
      process.removeListener('exit', kill);
    },
  };
}

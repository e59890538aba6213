/**
 * A Worker run locally (scripts/serve.ts: wrangler's local server without its inspector) on 127.0.0.1
 * for measuring and testing from outside: started in its own process group (so wrangler and its
 * workerd stop together), awaited until a URL answers, and its workerd processes found for /proc
 * readings. Used by the benchmarks, the memory measurement, the split probe and the Node tests.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { linkSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
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

/**
 * `tsx scripts/serve.ts ...args` in a process group of its own, its output in `logFile`. The caller
 * stops it by that group (killGroup), so no process it did not start is touched.
 */
export function spawnServe(args: string[], logFile: string): ChildProcess {
  const out = openSync(logFile, 'w');
  return spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'scripts/serve.ts'), ...args], {
    cwd: REPO_ROOT,
    detached: true,
    stdio: ['ignore', out, out],
    env: { ...process.env, WRANGLER_SEND_METRICS: 'false', WRANGLER_HIDE_BANNER: 'true', NO_COLOR: '1' },
  });
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

export async function waitReady(url: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (child.exitCode !== null) throw new Error(`the local server exited with code ${child.exitCode}`);
    try {
      const res = await fetch(url);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`the local server did not answer ${url} within ${timeoutMs / 1000} s`);
}

export interface WranglerDev {
  base: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** Hard links (same file system, no bytes copied) of every file below `from`, at the same paths below `to`. */
function linkTree(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  for (const name of readdirSync(from)) {
    const [a, b] = [join(from, name), join(to, name)];
    if (statSync(a).isDirectory()) linkTree(a, b);
    else linkSync(a, b);
  }
}

/**
 * A snapshot of a Worker for measuring: its bundle as `wrangler deploy --dry-run` builds it now, and
 * hard links of the named model folders of its assets, in a folder of `under` (.bench-cache/ unless
 * the caller, e.g. a test, names a directory outside the checkout; same file system) with a config
 * that runs them unbundled. The server does not rebuild on source edits, but wrangler reloads it when
 * anything in its assets directory changes (a shard build elsewhere in the checkout restarts every
 * Durable Object): a snapshot keeps a measurement on one version of the code and the shards.
 */
function freezeWorker(
  config: string,
  models: string[],
  under = join(REPO_ROOT, '.bench-cache'),
): { config: string; dir: string } {
  const dir = join(under, `frozen-${process.pid}-${Date.now()}`);
  const build = spawnSync(
    process.execPath,
    [
      join(REPO_ROOT, 'node_modules/wrangler/bin/wrangler.js'),
      'deploy',
      '--dry-run',
      '--outdir',
      join(dir, 'build'),
      '--config',
      config,
    ],
    {
      cwd: REPO_ROOT,
      encoding: 'utf8',
      env: { ...process.env, WRANGLER_SEND_METRICS: 'false', NO_COLOR: '1' },
    },
  );
  if (build.status !== 0)
    throw new Error(`wrangler deploy --dry-run --config ${config} failed:\n${build.stderr || build.stdout}`);
  let text = readFileSync(config, 'utf8');
  const main = /^main\s*=\s*"([^"]+)"/m.exec(text)?.[1];
  const assets = /^\[assets\][^[]*?^directory\s*=\s*"([^"]+)"/ms.exec(text)?.[1];
  if (!main || !assets) throw new Error(`${config}: no main or [assets] directory to freeze`);
  text = text
    .replace(/^main\s*=.*$/m, `main = "build/${basename(main).replace(/\.[cm]?[jt]s$/, '.js')}"\nno_bundle = true`)
    .replace(/^(\[assets\][^[]*?^directory\s*=\s*)"[^"]+"/ms, '$1"assets"');
  for (const m of models) linkTree(resolve(dirname(config), assets, m), join(dir, 'assets', m));
  writeFileSync(join(dir, 'wrangler.toml'), text);
  return { config: join(dir, 'wrangler.toml'), dir };
}

/**
 * Serves `config` on a free loopback port; `vars` become --var flags. With
 * `freeze`, it runs a snapshot of the Worker and of those model folders (freezeWorker), removed at stop.
 */
export async function startWranglerDev(
  config: string,
  logFile: string,
  vars: Record<string, string> = {},
  opts: { freeze?: { models: string[]; under?: string } } = {},
): Promise<WranglerDev> {
  const frozen = opts.freeze ? freezeWorker(resolve(REPO_ROOT, config), opts.freeze.models, opts.freeze.under) : null;
  if (frozen) config = frozen.config;
  const port = await freeLoopbackPort();
  const varArgs = Object.entries(vars).flatMap(([k, v]) => ['--var', `${k}:${v}`]);
  const child = spawnServe(['--config', config, '--ip', '127.0.0.1', '--port', String(port), ...varArgs], logFile);
  const kill = () => killGroup(child, 'SIGTERM');
  process.once('exit', kill);
  return {
    base: `http://127.0.0.1:${port}`,
    child,
    async stop() {
      kill();
      await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
      process.removeListener('exit', kill);
      if (frozen) rmSync(frozen.dir, { recursive: true, force: true });
    },
  };
}

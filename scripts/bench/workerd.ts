/**
 * The workerd row: the engine inside workerd (wrangler dev on 127.0.0.1, scripts/bench/worker/),
 * timed from outside because workerd's clocks only advance on I/O. Each figure is a request that
 * prefills (and decodes) minus the median of a /noop request with the same body; CPU time is
 * workerd's own (all its threads, from /proc), so it is comparable with the Node rows' CPU time.
 */
import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import { join } from 'node:path';
import { processCpuMs } from '../lib/clock.js';
import { median } from '../lib/stats.js';
import { freeLoopbackPort, REPO_ROOT } from '../lib/node-env.js';
import { findWorkerds, waitReady } from '../lib/wrangler-dev.js';

export interface WorkerdRowResult {
  row: 'dense' | 'lazy';
  length: number;
  ttftMs: number;
  ttftCpuMs: number;
  decodeMs: number;
  decodeCpuMs: number;
  tokens: number[];
}

export async function benchWorkerd(opts: {
  model: string;
  prompts: Record<string, number[]>;
  lengths: number[];
  reps: number;
  decode: number;
  lazySchedule: string;
  log: (line: string) => void;
  logFile: string;
}): Promise<WorkerdRowResult[]> {
  const port = await freeLoopbackPort();
  const base = `http://127.0.0.1:${port}`;
  const out = openSync(opts.logFile, 'w');
  const child = spawn(
    process.execPath,
    [
      join(REPO_ROOT, 'node_modules/wrangler/bin/wrangler.js'),
      'dev',
      '--config',
      'scripts/bench/worker/wrangler.toml',
      '--ip',
      '127.0.0.1',
      '--port',
      String(port),
    ],
    {
      cwd: REPO_ROOT,
      detached: true, // its own process group, so that wrangler and workerd stop together
      stdio: ['ignore', out, out],
      env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CLOUDFLARE_CF_FETCH_ENABLED: 'false', NO_COLOR: '1' },
    },
  );
  const stop = () => {
    if (child.pid && child.exitCode === null) {
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
  };
  process.once('exit', stop);
  try {
    opts.log(`workerd: wrangler dev (pid ${child.pid}) on ${base}, log ${opts.logFile}`);
    await waitReady(`${base}/ready?model=${opts.model}`, child, 180_000);
    let workerds: number[] = [];
    const cpuNow = () => workerds.reduce((s, pid) => s + processCpuMs(pid), workerds.length ? 0 : NaN);
    const post = async (path: string, body: object) => {
      const c0 = cpuNow();
      const t0 = performance.now();
      const res = await fetch(`${base}${path}`, {
        method: 'POST',
        body: JSON.stringify(body),
        headers: { 'content-type': 'application/json' },
      });
      const json = (await res.json()) as { tokens: number[]; error?: string };
      const ms = performance.now() - t0;
      if (!res.ok) throw new Error(`workerd ${path}: ${json.error ?? res.status}`);
      return { ms, cpu: cpuNow() - c0, tokens: json.tokens };
    };
    const results: WorkerdRowResult[] = [];
    for (const length of opts.lengths) {
      const tokens = opts.prompts[String(length)];
      for (const [row, schedule] of [
        ['dense', null],
        ['lazy', opts.lazySchedule],
      ] as const) {
        const body = (decode: number) => ({ model: opts.model, tokens, schedule, decode });
        // Warm-up: a fresh isolate is up to 20x slower until V8 has optimised the hot wasm and JS.
        for (let i = 0; i < 12; i++) await post('/run', { ...body(16), tokens: tokens.slice(0, 128) });
        for (let i = 0; i < 2; i++) await post('/run', body(16));
        workerds = findWorkerds(child.pid!);
        if (!workerds.length) opts.log('workerd: no workerd process under wrangler; CPU times will be missing');
        const noop: { ms: number; cpu: number }[] = [];
        const prefill: { ms: number; cpu: number }[] = [];
        const full: { ms: number; cpu: number; tokens: number[] }[] = [];
        for (let rep = 0; rep < opts.reps; rep++) {
          noop.push(await post('/noop', body(0)));
          prefill.push(await post('/run', body(0)));
          full.push(await post('/run', body(opts.decode)));
        }
        const m = (xs: { ms: number; cpu: number }[], k: 'ms' | 'cpu') => median(xs.map((x) => x[k]));
        const r: WorkerdRowResult = {
          row,
          length,
          ttftMs: m(prefill, 'ms') - m(noop, 'ms'),
          ttftCpuMs: m(prefill, 'cpu') - m(noop, 'cpu'),
          decodeMs: m(full, 'ms') - m(prefill, 'ms'),
          decodeCpuMs: m(full, 'cpu') - m(prefill, 'cpu'),
          tokens: full[0].tokens,
        };
        opts.log(
          `workerd ${row.padEnd(6)} len ${length}: TTFT ${r.ttftMs.toFixed(1)} ms (cpu ${r.ttftCpuMs.toFixed(1)}), decode ${((opts.decode * 1000) / r.decodeCpuMs).toFixed(1)} tok/s (cpu)`,
        );
        results.push(r);
      }
    }
    return results;
  } finally {
    stop();
    await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
    process.removeListener('exit', stop);
  }
}

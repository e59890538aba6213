/**
 * Our engine's rows inside workerd: the same shards and wasm as the product Worker, in `wrangler dev`
 * on 127.0.0.1 (scripts/bench/worker/), both rows in one isolate as in the Node child. Timed from
 * outside, because workerd's clocks only advance on I/O: TTFT is a POST /prefill, decode a POST
 * /decode on the sequence it holds, each minus the median of a /noop request (the HTTP round trip).
 * CPU time is that of the workerd processes (/proc, all their threads), comparable with the Node
 * rows' CPU time.
 */
import { join } from 'node:path';
import { median } from '../../lib/stats.js';
import { REPO_ROOT } from '../../lib/node-env.js';
import { maxPeakRssMb, treeCpuMs } from '../../lib/proc.js';
import { findWorkerds, startWranglerDev, waitReady, type WranglerDev } from '../../lib/wrangler-dev.js';
import type { Peer, PeerTrial } from './peer.js';

export interface WorkerdPeers {
  dense: Peer;
  lazy: Peer;
  close(): Promise<void>;
}

export async function startWorkerdEngine(opts: {
  model: string;
  contextTokens: number;
  schedule: string;
  logFile: string;
  log: (m: string) => void;
  /** where the frozen snapshot goes (default .bench-cache/) */
  freezeUnder?: string;
}): Promise<WorkerdPeers> {
  const dev: WranglerDev = await startWranglerDev(
    join(REPO_ROOT, 'scripts/bench/worker/wrangler.toml'),
    opts.logFile,
    {
      CONTEXT_TOKENS: String(opts.contextTokens),
    },
    { freeze: { models: [opts.model], under: opts.freezeUnder } },
  );
  try {
    opts.log(`workerd: local server (pid ${dev.child.pid}) on ${dev.base}, log ${opts.logFile}; loading ${opts.model}`);
    await waitReady(`${dev.base}/ready?model=${opts.model}`, dev.child, 600_000);
  } catch (e) {
    await dev.stop();
    throw e;
  }
  const workerds = findWorkerds(dev.child.pid!);
  if (!workerds.length) opts.log('workerd: no workerd process under wrangler; CPU times will be missing');
  const cpu = () => (workerds.length ? treeCpuMs(workerds) : NaN);
  const post = async <T>(path: string, body: object): Promise<{ ms: number; cpuMs: number; json: T }> => {
    const [c0, t0] = [cpu(), performance.now()];
    const res = await fetch(`${dev.base}${path}`, {
      method: 'POST',
      body: JSON.stringify(body),
      headers: { 'content-type': 'application/json' },
    });
    const json = (await res.json()) as T & { error?: string };
    const [ms, cpuMs] = [performance.now() - t0, cpu() - c0];
    if (!res.ok) throw new Error(`workerd ${path}: ${json.error ?? res.status}`);
    return { ms, cpuMs, json };
  };
  const noops: { ms: number; cpuMs: number }[] = [];
  for (let i = 0; i < 9; i++) noops.push(await post('/noop', { tokens: [] }));
  const overhead = { ms: median(noops.map((n) => n.ms)), cpuMs: median(noops.map((n) => n.cpuMs)) };
  opts.log(`workerd: request overhead ${overhead.ms.toFixed(1)} ms (cpu ${overhead.cpuMs.toFixed(1)})`);

  const make = (row: 'dense' | 'lazy'): Peer => ({
    row: `${row === 'dense' ? 'dense' : `lazy \`${opts.schedule}\``} (workerd)`,
    info: {
      engine: 'lazy-edge (onnxruntime-web 1.30 wasm, 1 thread, workerd served by scripts/serve.ts)',
      threads: 1,
      ...(row === 'lazy' ? { schedule: opts.schedule } : {}),
    },
    async run(prompt, decode, stop): Promise<PeerTrial> {
      const schedule = row === 'lazy' ? opts.schedule : null;
      const p = await post<{ prompt_tokens: number }>('/prefill', { model: opts.model, tokens: prompt.ids, schedule });
      const d = await post<{ tokens: number[] }>('/decode', { decode, stop });
      return {
        ttftMs: p.ms - overhead.ms,
        ttftCpuMs: p.cpuMs - overhead.cpuMs,
        decodeMs: d.ms - overhead.ms,
        decodeCpuMs: d.cpuMs - overhead.cpuMs,
        tokens: d.json.tokens,
        promptTokens: p.json.prompt_tokens,
      };
    },
    peakRssMb: async () => maxPeakRssMb(workerds),
    close: async () => {},
  });
  return { dense: make('dense'), lazy: make('lazy'), close: () => dev.stop() };
}

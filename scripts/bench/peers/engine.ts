/**
 * Our engine's rows (dense, lazy) as peers: one child process (scripts/bench/child.ts --serve) holding the
 * model once and running whichever row each request names, so that they interleave with the other
 * peers. Both rows share that process, so its peak memory is the larger of the two.
 */
import { join } from 'node:path';
import { REPO_ROOT } from '../../lib/node-env.js';
import { LineProcess } from './line-process.js';
import type { Peer, PeerTrial } from './peer.js';

export interface EnginePeers {
  dense: Peer;
  lazy: Peer;
  close(): Promise<void>;
}

export async function startEngine(opts: {
  shards: string;
  contextTokens: number;
  schedule: string;
  log: (m: string) => void;
}): Promise<EnginePeers> {
  const proc = new LineProcess(
    process.execPath,
    [
      '--import',
      'tsx',
      join(REPO_ROOT, 'scripts/bench/child.ts'),
      '--serve',
      opts.shards,
      String(opts.contextTokens),
      opts.schedule,
    ],
    {
      cwd: REPO_ROOT,
      env: { ...process.env, LAZY_EDGE_MEMORY_BUDGET_MB: 'off' }, // SmolLM2's f32 weights exceed the Worker budget
      log: (l) => opts.log(`engine: ${l}`),
    },
  );
  const ready = await proc.next<{ ready: boolean; layers: number }>();
  if (!ready.ready) throw new Error('engine child did not start');
  let peak: number | null = null;
  const make = (row: 'dense' | 'lazy', label: string): Peer => ({
    row: label,
    info: {
      engine: 'lazy-edge (onnxruntime-web 1.30 wasm, 1 thread, Node)',
      threads: 1,
      ...(row === 'lazy' ? { schedule: opts.schedule } : {}),
    },
    async run(prompt, decode, stop) {
      const r = await proc.request<PeerTrial & { error?: string; peakRssMb: number }>({
        cmd: 'run',
        row,
        prompt: prompt.ids,
        decode,
        stop,
      });
      if (r.error) throw new Error(`engine ${row}: ${r.error}`);
      peak = r.peakRssMb;
      return r;
    },
    peakRssMb: async () => peak,
    close: async () => {},
  });
  return { dense: make('dense', 'dense'), lazy: make('lazy', 'lazy'), close: () => proc.close() };
}

/**
 * llama.cpp native on one thread (llama-cpp-python, scripts/reference/llamacpp_peer.py): the
 * physical anchor. Not available when Python or its llama_cpp module is missing (CI), which the
 * report says instead of dropping the row.
 */
import { join } from 'node:path';
import { REPO_ROOT } from '../../lib/node-env.js';
import { LineProcess } from './line-process.js';
import { unavailable, type Peer, type PeerStart, type PeerTrial } from './peer.js';

interface Ready {
  ready: boolean;
  reason?: string;
  version?: string;
  system_info?: string;
  threads?: number;
  n_batch?: number;
}

export async function startLlamaCpp(opts: {
  gguf: string;
  threads?: number;
  nCtx: number;
  log: (m: string) => void;
  python?: string;
}): Promise<PeerStart> {
  const threads = opts.threads ?? 1;
  const row = `llama.cpp native (${threads} thread${threads > 1 ? 's' : ''})`;
  const python = opts.python ?? process.env.PYTHON ?? 'python3';
  const proc = new LineProcess(
    python,
    [
      join(REPO_ROOT, 'scripts/reference/llamacpp_peer.py'),
      '--gguf',
      opts.gguf,
      '--threads',
      String(threads),
      '--n-ctx',
      String(opts.nCtx),
    ],
    {
      cwd: REPO_ROOT,
      // One thread means one: no OpenMP/BLAS pool beside llama.cpp's own.
      env: { ...process.env, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: '1' },
      log: (l) => opts.log(`llama.cpp: ${l}`),
    },
  );
  let ready: Ready;
  try {
    ready = await proc.next<Ready>();
  } catch (e) {
    return unavailable(row, `${python} could not run (${(e as Error).message})`);
  }
  if (!ready.ready) {
    await proc.close().catch(() => {});
    return unavailable(row, ready.reason ?? 'not ready');
  }
  let peak: number | null = null;
  const peer: Peer = {
    row,
    info: {
      engine: `llama-cpp-python ${ready.version}`,
      threads,
      n_batch: ready.n_batch,
      system_info: ready.system_info,
      native: true,
    },
    async run(prompt, decode, stop) {
      const r = await proc.request<PeerTrial & { error?: string; peakRssMb: number }>({
        cmd: 'run',
        prompt: prompt.ids,
        decode,
        stop,
      });
      if (r.error) throw new Error(`llama.cpp peer: ${r.error}`);
      peak = r.peakRssMb;
      const { peakRssMb: _, ...trial } = r;
      return threads > 1 ? { ...trial, ttftCpuMs: Infinity, decodeCpuMs: Infinity } : trial;
    },
    peakRssMb: async () => peak,
    close: () => proc.close(),
  };
  return { ok: true, peer };
}

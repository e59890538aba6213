/**
 * transformers.js (@huggingface/transformers) on our monolithic export of SmolLM2 (smol-export.ts),
 * at dtype q8 (its wasm default) or q4, on this project's onnxruntime-web (wasm, one thread), each in
 * its own child process (scripts/bench/child.ts --serve-transformers).
 */
import { join } from 'node:path';
import { REPO_ROOT } from '../../lib/node-env.js';
import { LineProcess } from './line-process.js';
import { unavailable, type Peer, type PeerStart, type PeerTrial } from './peer.js';
import type { SmolExport, SmolTjsDtype } from './smol-export.js';

export async function startTransformers(opts: {
  exported: SmolExport;
  dtype: SmolTjsDtype;
  log: (m: string) => void;
}): Promise<PeerStart> {
  const row = `transformers.js ${opts.dtype}`;
  const name = `transformers.js-${opts.dtype}`;
  const proc = new LineProcess(
    process.execPath,
    [
      '--import',
      'tsx',
      join(REPO_ROOT, 'scripts/bench/child.ts'),
      '--serve-transformers',
      opts.exported.hfRoot,
      opts.exported.hfName,
      opts.dtype,
    ],
    {
      cwd: REPO_ROOT,
      log: (l) => opts.log(`${row}: ${l}`),
    },
  );
  try {
    await proc.next<{ ready: boolean }>();
  } catch (e) {
    return unavailable(row, (e as Error).message);
  }
  let peak: number | null = null;
  const peer: Peer = {
    row,
    info: {
      engine: '@huggingface/transformers 4.3.2 on onnxruntime-web 1.30 wasm, 1 thread',
      dtype: opts.dtype,
      graph: `our monolithic export (${{ fp32: 'f32, the exact weights', q8: 'int8 weights per output channel, MatMulInteger', q4: 'int4 blocks of 32, MatMulNBits' }[opts.dtype]})`,
      threads: 1,
    },
    async run(prompt, decode, stop) {
      const r = await proc.request<PeerTrial & { error?: string; peakRssMb: number }>({
        cmd: 'run',
        row: name,
        prompt: prompt.ids,
        decode,
        stop,
      });
      if (r.error) throw new Error(`${row}: ${r.error}`);
      peak = r.peakRssMb;
      return r;
    },
    peakRssMb: async () => peak,
    close: () => proc.close(),
  };
  return { ok: true, peer };
}

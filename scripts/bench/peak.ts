/**
 * The wasm MatMul peak on this machine, measured in the same run as everything else: large f32
 * MatMul graphs (a weight initializer times a fed activation, as in the layers) on the same
 * onnxruntime-web session path, median of several runs, CPU and wall time.
 */
import { createGraphSession } from '../../src/runtime/onnx-runtime.js';
import { GraphBuilder } from '../../src/shards/onnx-builder.js';
import { threadCpuMs } from '../lib/clock.js';
import { median } from '../lib/stats.js';
import { initNodeRuntime } from '../lib/node-env.js';

export interface PeakShape {
  m: number;
  k: number;
  n: number;
  gflops: number;
  gflopsCpu: number;
}

export interface MatMulPeak {
  /** the best shape's median, GFLOP/s */
  gflops: number;
  gflopsCpu: number;
  shapes: PeakShape[];
}

/** [M,K]x[K,N]: square, a 768-wide QKV projection and a stories15M-sized FFN at prefill. */
export const PEAK_SHAPES: [number, number, number][] = [
  [1024, 1024, 1024],
  [2048, 768, 2304],
  [1024, 288, 1536],
];

export async function measureMatMulPeak(reps = 7): Promise<MatMulPeak> {
  initNodeRuntime();
  const shapes: PeakShape[] = [];
  for (const [m, k, n] of PEAK_SHAPES) {
    const b = new GraphBuilder('matmul_peak');
    const a = b.input('a', 'float32', [m, k]);
    const w = b.f32(
      'w',
      [k, n],
      Float32Array.from({ length: k * n }, (_, i) => Math.sin(i)),
    );
    b.output(b.op('MatMul', [a, w]), 'y', 'float32', [m, n]);
    const session = await createGraphSession('matmul_peak', b.toBytes());
    const feeds = { a: { data: Float32Array.from({ length: m * k }, (_, i) => Math.cos(i)), dims: [m, k] } };
    for (let i = 0; i < 3; i++) await session.run(feeds);
    const wall: number[] = [];
    const cpu: number[] = [];
    for (let r = 0; r < reps; r++) {
      const [c0, t0] = [threadCpuMs(), performance.now()];
      await session.run(feeds);
      wall.push(performance.now() - t0);
      cpu.push(Math.min(wall[wall.length - 1], threadCpuMs() - c0)); // as the rows: min(wall, CPU)
    }
    await session.release();
    const flop = 2 * m * k * n;
    shapes.push({ m, k, n, gflops: flop / median(wall) / 1e6, gflopsCpu: flop / median(cpu) / 1e6 });
  }
  return {
    gflops: Math.max(...shapes.map((s) => s.gflops)),
    gflopsCpu: Math.max(...shapes.map((s) => s.gflopsCpu)),
    shapes,
  };
}

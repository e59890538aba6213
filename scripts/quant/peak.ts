/**
 * The wasm MatMul peak for a model's layer shapes, measured in the quant-bench run that measures the
 * prefills (issue 12's target: dense prefill at >= 60% of it). One f32 MatMul graph per shape, the
 * weight an initializer as in the `dequant` build (so MLAS prepacks it the same way), the activation
 * a [rows x in] input with rows = the engine's prefill chunk; each is run until it has had enough
 * on-CPU time, and its best run is the figure (noise on a shared machine only slows a run down).
 */
import type { ModelConfig } from '../../src/model/config.js';
import { PREFILL_CHUNK } from '../../src/engine/step.js';
import { createGraphSession } from '../../src/runtime/onnx-runtime.js';
import { GraphBuilder } from '../../src/shards/onnx-builder.js';
import { bestCpuMs } from '../lib/clock.js';

export interface PeakChildJob {
  kind: 'peak';
  config: Pick<ModelConfig, 'dim' | 'hiddenDim' | 'kvDim'>;
  rows: number;
  /** on-CPU milliseconds to spend per shape */
  budgetMs: number;
}

export interface PeakShape {
  name: string;
  m: number;
  k: number;
  n: number;
  bestCpuMs: number;
  runs: number;
  gflops: number;
}

export interface PeakResult {
  rows: number;
  shapes: PeakShape[];
  /** the best shape's GFLOP/s: the peak */
  peakGflops: number;
  /** a layer's four weight MatMuls together: their FLOPs over the sum of their best times */
  layerGflops: number;
}

/** The weight matrices of one decoder layer as [in, out] (wq|wk|wv and w1|w3 stacked, as the shards hold them). */
export function layerShapes(
  c: Pick<ModelConfig, 'dim' | 'hiddenDim' | 'kvDim'>,
): { name: string; k: number; n: number }[] {
  return [
    { name: 'wq|wk|wv', k: c.dim, n: c.dim + 2 * c.kvDim },
    { name: 'wo', k: c.dim, n: c.dim },
    { name: 'w1|w3', k: c.dim, n: 2 * c.hiddenDim },
    { name: 'w2', k: c.hiddenDim, n: c.dim },
  ];
}

/**
 * FLOPs (multiply + add = 2) of a dense prefill of n tokens: the layers' weight MatMuls for every token,
 * causal attention (scores and the weighted sum of values: 2 × 2 × dim per query per key it sees) and the
 * classifier for the last token (the prefill's only logits).
 */
export function prefillFlops(
  c: ModelConfig,
  n: number,
): { weights: number; attention: number; head: number; total: number } {
  const perToken = layerShapes(c).reduce((s, m) => s + 2 * m.k * m.n, 0);
  const weights = c.nLayers * n * perToken;
  const attention = c.nLayers * 4 * c.nHeads * c.headSize * ((n * (n + 1)) / 2);
  const head = 2 * c.dim * c.vocabSize;
  return { weights, attention, head, total: weights + attention + head };
}

export async function runPeakChild(job: PeakChildJob, initRuntime: () => void): Promise<PeakResult> {
  initRuntime();
  const log = (m: string) => process.stderr.write(`${m}\n`);
  const shapes: PeakShape[] = [];
  for (const s of layerShapes(job.config)) {
    const b = new GraphBuilder(`peak-${s.name}`);
    const w = new Float32Array(s.k * s.n);
    for (let i = 0; i < w.length; i++) w[i] = Math.sin(i) * 0.05; // values do not matter to the speed; not all zero
    const y = b.op('MatMul', [b.input('x', 'float32', [job.rows, s.k]), b.f32('w', [s.k, s.n], w)]);
    b.output(y, 'y', 'float32', [job.rows, s.n]);
    const session = await createGraphSession(`peak-${s.name}`, b.toBytes());
    const x = new Float32Array(job.rows * s.k).map((_, i) => Math.cos(i));
    const feeds = { x: { data: x, dims: [job.rows, s.k] } };
    const { best, runs } = await bestCpuMs(() => session.run(feeds), {
      warmups: 3,
      budgetMs: job.budgetMs,
      minRuns: 5,
    });
    await session.release();
    const gflops = (2 * job.rows * s.k * s.n) / (best * 1e6);
    log(
      `MatMul [${job.rows} x ${s.k}] x [${s.k} x ${s.n}] (${s.name}): ${gflops.toFixed(2)} GFLOP/s (best of ${runs}, ${best.toFixed(2)} ms CPU)`,
    );
    shapes.push({ name: s.name, m: job.rows, k: s.k, n: s.n, bestCpuMs: best, runs, gflops });
  }
  const flops = shapes.reduce((t, s) => t + 2 * s.m * s.k * s.n, 0);
  const ms = shapes.reduce((t, s) => t + s.bestCpuMs, 0);
  return {
    rows: job.rows,
    shapes,
    peakGflops: Math.max(...shapes.map((s) => s.gflops)),
    layerGflops: flops / (ms * 1e6),
  };
}

/** The job for a model: the engine's prefill chunk as the rows. */
export function peakJob(c: ModelConfig, budgetMs = 1500): PeakChildJob {
  return {
    kind: 'peak',
    config: { dim: c.dim, hiddenDim: c.hiddenDim, kvDim: c.kvDim },
    rows: PREFILL_CHUNK,
    budgetMs,
  };
}

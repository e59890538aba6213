/**
 * `npm run quant-bench -- --decode-ops [--model DIR]`: where a decode step's weight time goes, one
 * matrix at a time. Each of a layer's four weight products and one classifier part runs as a graph of
 * its own on one activation row (a decode step's shape), in every kernel of `DECODE_KERNELS`, with
 * seeded weights (speed depends on shapes only); the best on-CPU run of each is the figure. The sum
 * over a layer's products times the layers, plus the classifier parts, is what the weights cost a
 * token; decode-profile's layer time minus it is attention, norms and the runs' overhead.
 */
import type { ModelConfig } from '../../src/model/config.js';
import { createGraphSession } from '../../src/runtime/onnx-runtime.js';
import { GraphBuilder } from '../../src/shards/onnx-builder.js';
import { f32Linear, type LinearEmitter } from '../../src/shards/layer-graphs.js';
import {
  int8Integer2Linear,
  int8Integer2StackedLinear,
  int8Integer2TwoLinear,
  int8IntegerLinear,
} from '../../src/shards/quant-linear.js';
import { bestCpuMs } from '../lib/clock.js';
import { layerShapes } from './peak.js';

export const DECODE_KERNELS: Record<string, LinearEmitter> = {
  f32: f32Linear,
  integer: int8IntegerLinear,
  'integer2-two': int8Integer2TwoLinear,
  'integer2-stacked': int8Integer2StackedLinear,
  /** as built: stacked where the matrix is wider than deep */
  integer2: int8Integer2Linear,
};

export interface DecodeOpsJob {
  kind: 'decode-ops';
  config: Pick<ModelConfig, 'dim' | 'hiddenDim' | 'kvDim' | 'nLayers'>;
  /** classifier rows per part, as the build's manifest has them */
  headRows: number[];
  rows: number;
  budgetMs: number;
}

export interface DecodeOp {
  kernel: string;
  name: string;
  k: number;
  n: number;
  /** how many times a decode step runs it */
  perToken: number;
  bestUs: number;
  runs: number;
  /** max |y − y_f32| over max |y_f32|: the kernel's error on this seeded row */
  relErrVsF32: number;
}

export interface DecodeOpsResult {
  rows: number;
  ops: DecodeOp[];
  /** per kernel: a token's weight products, layers and classifier, in ms */
  perToken: Record<string, { layersMs: number; headMs: number; totalMs: number }>;
}

export async function runDecodeOpsChild(job: DecodeOpsJob, initRuntime: () => void): Promise<DecodeOpsResult> {
  initRuntime();
  const log = (m: string) => process.stderr.write(`${m}\n`);
  const shapes = [
    ...layerShapes(job.config).map((s) => ({ ...s, perToken: job.config.nLayers })),
    ...[...new Set(job.headRows)].map((n) => ({
      name: `head part ${n}`,
      k: job.config.dim,
      n,
      perToken: job.headRows.filter((r) => r === n).length,
    })),
  ];
  const ops: DecodeOp[] = [];
  for (const s of shapes) {
    const w = new Float32Array(s.k * s.n).map((_, i) => Math.sin(i * 0.7) * 0.05); // [out, in]
    const x = new Float32Array(job.rows * s.k).map((_, i) => Math.cos(i) * (i % 97 === 0 ? 20 : 1)); // a few outlier channels
    let reference: Float32Array | undefined; // f32 runs first
    for (const [kernel, emit] of Object.entries(DECODE_KERNELS)) {
      const b = new GraphBuilder(`decode-${kernel}-${s.name}`);
      b.output(emit(b, b.input('x', 'float32', ['q', s.k]), 'w', w, s.n, s.k), 'y', 'float32', ['q', s.n]);
      const session = await createGraphSession(`decode-${kernel}-${s.name}`, b.toBytes());
      const feeds = { x: { data: x, dims: [job.rows, s.k] } };
      const y = (await session.run(feeds)).y.data as Float32Array;
      reference ??= y;
      let err = 0;
      let top = 0;
      for (let i = 0; i < y.length; i++)
        [err, top] = [Math.max(err, Math.abs(y[i] - reference[i])), Math.max(top, Math.abs(reference[i]))];
      const { best, runs } = await bestCpuMs(() => session.run(feeds), {
        warmups: 5,
        budgetMs: job.budgetMs,
        minRuns: 20,
      });
      await session.release();
      log(
        `${kernel} [${job.rows} x ${s.k}] x [${s.k} x ${s.n}] (${s.name}): ${(best * 1000).toFixed(0)} us (best of ${runs}), error vs f32 ${(err / top).toExponential(1)}`,
      );
      ops.push({
        kernel,
        name: s.name,
        k: s.k,
        n: s.n,
        perToken: s.perToken,
        bestUs: best * 1000,
        runs,
        relErrVsF32: err / top,
      });
    }
  }
  const perToken: DecodeOpsResult['perToken'] = {};
  for (const kernel of Object.keys(DECODE_KERNELS)) {
    const mine = ops.filter((o) => o.kernel === kernel);
    const sum = (head: boolean) =>
      mine.filter((o) => o.name.startsWith('head') === head).reduce((t, o) => t + (o.bestUs * o.perToken) / 1000, 0);
    perToken[kernel] = { layersMs: sum(false), headMs: sum(true), totalMs: sum(false) + sum(true) };
  }
  return { rows: job.rows, ops, perToken };
}

/**
 * The weight products of one SmolLM2 layer at a prefill chunk's rows, each form alone (issue 27):
 *
 *   flock /tmp/lazy-edge-cpu.lock node --import tsx scripts/probes/prefill-kernels.ts [--rows 128] [--reps 12] [--forms f32,integer,...]
 *
 * One graph per (form, matrix): x [rows, in] -> x @ w^T, w = layer 0's matrix of the served GGUF in f32 (what
 * `dequant` folds to), or its own Q4_1 blocks for the MatMulNBits forms (GGUF_FORMS; -aN = accuracy_level N). Best and median on-CPU-equivalent wall time of --reps runs after 2 warm-ups.
 * Also checks each form's error against the f32 product on the same random rows with one outlier channel.
 */
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-web/wasm';
import { parseGgufModel } from '../../src/model/gguf-model.js';
import { GraphBuilder } from '../../src/shards/onnx-builder.js';
import { f32Linear, type LinearEmitter } from '../../src/shards/layer-graphs.js';
import { int8Integer2Linear, int8IntegerLinear } from '../../src/shards/quant-linear.js';
import { int8Row2LinearWith, int8RowLinearWith } from '../../src/shards/int8-rows.js';
import { stackGgml, toF32 } from '../../src/shards/ggml-linear.js';
import { nbits4, nbits8 } from '../../src/shards/ggml-kernels.js';
import type { GgmlMatrix } from '../../src/model/gguf-model.js';
import type { GraphBuilder as Builder } from '../../src/shards/onnx-builder.js';
import { readGgufHeader } from '../lib/gguf-file.js';
import { initNodeRuntime } from '../lib/node-env.js';
import { SHARED_GGUF } from '../lib/served-model.js';

export const FORMS: Record<string, LinearEmitter> = {
  f32: f32Linear,
  integer: int8IntegerLinear,
  integer2: int8Integer2Linear,
  row: int8RowLinearWith(false),
  row2: int8Row2LinearWith(false),
  rowsym: int8RowLinearWith(true),
  row2sym: int8Row2LinearWith(true),
};

/** Forms that read the file's own blocks (MatMulNBits): fed the GGUF matrix, not its f32 values. */
export const GGUF_FORMS: Record<string, (b: Builder, x: string, name: string, w: GgmlMatrix) => string> = {
  nbits: (b, x, n, w) => nbits4(b, x, n, w, { floatZeroPoint: false }),
  'nbits-zp': (b, x, n, w) => nbits4(b, x, n, w, { floatZeroPoint: true }),
  'nbits-zp-a1': (b, x, n, w) => nbits4(b, x, n, w, { floatZeroPoint: true, accuracyLevel: 1 }),
  'nbits-zp-a4': (b, x, n, w) => nbits4(b, x, n, w, { floatZeroPoint: true, accuracyLevel: 4 }),
  'nbits-a4': (b, x, n, w) => nbits4(b, x, n, w, { floatZeroPoint: false, accuracyLevel: 4 }),
  'nbits8-a0': (b, x, n, w) => nbits8(b, x, n, w),
  'nbits8-a4': (b, x, n, w) => nbits8(b, x, n, w, 4),
};

async function main() {
  const { values } = parseArgs({
    options: {
      rows: { type: 'string', default: '128' },
      reps: { type: 'string', default: '12' },
      forms: { type: 'string', default: [...Object.keys(FORMS), ...Object.keys(GGUF_FORMS)].join(',') },
    },
  });
  initNodeRuntime();
  const rows = Number(values.rows);
  const m = parseGgufModel(await readGgufHeader(SHARED_GGUF), SHARED_GGUF);
  const L = m.layers[0];
  const ggml: Record<string, GgmlMatrix> = {
    'wq|wk|wv 576->960': stackGgml([L.wq, L.wk, L.wv]),
    'wo 576->576': L.wo,
    'w1|w3 576->3072': stackGgml([L.w1, L.w3]),
    'w2 1536->576': L.w2,
  };
  const mats = Object.fromEntries(Object.entries(ggml).map(([k, w]) => [k, toF32(w)]));
  const shapes: Record<string, [number, number]> = {
    'wq|wk|wv 576->960': [960, 576],
    'wo 576->576': [576, 576],
    'w1|w3 576->3072': [3072, 576],
    'w2 1536->576': [576, 1536],
  };
  const forms = values.forms.split(',');
  const total: Record<string, number> = {};
  for (const [mname, w] of Object.entries(mats)) {
    const [out, inp] = shapes[mname];
    const x = Float32Array.from({ length: rows * inp }, () => Math.random() * 2 - 1);
    for (let r = 0; r < rows; r++) x[r * inp + 7] *= 30; // one outlier channel, as LLM activations have
    let ref: Float32Array | null = null;
    const line: string[] = [];
    for (const f of forms) {
      const b = new GraphBuilder(`${f}_${mname}`);
      const xin = b.input('x', 'float32', ['rows', inp]);
      const y0 = GGUF_FORMS[f] ? GGUF_FORMS[f](b, xin, 'w', ggml[mname]) : FORMS[f](b, xin, 'w', w, out, inp);
      b.output(y0, 'y', 'float32', ['rows', out]);
      const s = await ort.InferenceSession.create(b.toBytes(), {
        executionProviders: ['wasm'],
        graphOptimizationLevel: 'all',
      });
      const feeds = { x: new ort.Tensor('float32', x, [rows, inp]) };
      for (let i = 0; i < 2; i++) await s.run(feeds);
      const times: number[] = [];
      let y: Float32Array = new Float32Array(0);
      for (let i = 0; i < Number(values.reps); i++) {
        const t = performance.now();
        const o = await s.run(feeds);
        times.push(performance.now() - t);
        y = o.y.data as Float32Array;
      }
      await s.release();
      times.sort((a, c) => a - c);
      if (!ref) ref = y;
      let err = 0;
      let norm = 0;
      for (let i = 0; i < y.length; i++) {
        err += (y[i] - ref[i]) ** 2;
        norm += ref[i] ** 2;
      }
      const flops = 2 * rows * inp * out;
      total[f] = (total[f] ?? 0) + times[0];
      line.push(
        `${f} ${times[0].toFixed(2)} ms (median ${times[times.length >> 1].toFixed(2)}, ${(flops / times[0] / 1e6).toFixed(1)} GOP/s, rel err ${Math.sqrt(err / norm).toExponential(1)})`,
      );
    }
    console.log(`${mname} x ${rows} rows: ${line.join('; ')}`);
  }
  console.log(
    `a layer's four products, best: ${forms.map((f) => `${f} ${total[f].toFixed(2)} ms (x${(total[forms[0]] / total[f]).toFixed(2)} ${forms[0]})`).join('; ')}`,
  );
}

await main();

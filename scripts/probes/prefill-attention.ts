/**
 * Attention of one prefill chunk, three graph forms (issue 27):
 *
 *   flock /tmp/lazy-edge-cpu.lock node --import tsx scripts/probes/prefill-attention.ts [--tokens 512,2048] [--reps 3]
 *
 * - chunked: the layer graph's own ops (src/shards/layer-graphs.ts): K/V concat, transposes, 4-D MatMuls for
 *   GQA without repeating K/V, the position mask by Where, Softmax, the context MatMul.
 * - mha: com.microsoft MultiHeadAttention, K/V repeated to the 9 query heads (Expand), the same position mask
 *   as attention_bias.
 * - gqa: com.microsoft GroupQueryAttention (its causal mask is by index: exact for a dense prefill only), past
 *   K/V in its [1, kvHeads, past, 64] layout.
 * Every form runs the engine's chunk schedule of a dense prefill (chunk j: its rows as queries, the rows of
 * chunks < j as past), inputs q [rows, 576] and k, v [rows, 192] roped already, random. Sums over the chunks,
 * best of --reps passes; outputs compared with chunked's.
 */
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-web/wasm';
import { prefillChunks } from '../../src/engine/step.js';
import { GraphBuilder } from '../../src/shards/onnx-builder.js';
import { initNodeRuntime } from '../lib/node-env.js';

const H = 9;
const KVH = 3;
const HS = 64;
const D = H * HS;
const KD = KVH * HS;
const G = H / KVH;

function chunked(): Uint8Array {
  const b = new GraphBuilder('chunked');
  const q = b.input('q', 'float32', ['q', D]);
  const kNew = b.input('k', 'float32', ['q', KD]);
  const vNew = b.input('v', 'float32', ['q', KD]);
  const pastK = b.input('past_k', 'float32', ['c', KD]);
  const pastV = b.input('past_v', 'float32', ['c', KD]);
  const pos = b.input('pos', 'float32', ['q']);
  const pastPos = b.input('past_pos', 'float32', ['c']);
  const keys = b.op('Concat', [pastK, kNew], { axis: 0 });
  const values = b.op('Concat', [pastV, vNew], { axis: 0 });
  const keyPos = b.op('Concat', [pastPos, pos], { axis: 0 });
  const qh = b.op('Transpose', [b.op('Reshape', [q, b.i64('q_heads', [0, KVH, G, HS])])], { perm: [1, 2, 0, 3] });
  const kvHeads = b.i64('kv_heads', [0, KVH, 1, HS]);
  const kh = b.op('Transpose', [b.op('Reshape', [keys, kvHeads])], { perm: [1, 2, 3, 0] });
  const vh = b.op('Transpose', [b.op('Reshape', [values, kvHeads])], { perm: [1, 2, 0, 3] });
  const scores = b.op('Mul', [b.op('MatMul', [qh, kh]), b.scalar('scale', 1 / Math.sqrt(HS))]);
  const visible = b.op('LessOrEqual', [
    b.op('Unsqueeze', [keyPos, b.i64('ax0', [0])]),
    b.op('Unsqueeze', [pos, b.i64('ax1b', [1])]),
  ]);
  const maskAdd = b.op('Where', [visible, b.scalar('zero', 0), b.scalar('neg_inf', -Infinity)]);
  const probs = b.op('Softmax', [b.op('Add', [scores, maskAdd])], { axis: -1 });
  const ctx = b.op('MatMul', [probs, vh]);
  const out = b.op('Reshape', [b.op('Transpose', [ctx], { perm: [2, 0, 1, 3] }), b.i64('flat', [0, D])]);
  b.output(out, 'o', 'float32', ['q', D]);
  return b.toBytes();
}

function mha(): Uint8Array {
  const b = new GraphBuilder('mha');
  const q = b.input('q', 'float32', ['q', D]);
  const kNew = b.input('k', 'float32', ['q', KD]);
  const vNew = b.input('v', 'float32', ['q', KD]);
  const pastK = b.input('past_k', 'float32', ['c', KD]);
  const pastV = b.input('past_v', 'float32', ['c', KD]);
  const pos = b.input('pos', 'float32', ['q']);
  const pastPos = b.input('past_pos', 'float32', ['c']);
  const rep = (x: string, tag: string) =>
    b.op('Reshape', [
      b.op('Expand', [b.op('Reshape', [x, b.i64(`${tag}_a`, [0, KVH, 1, HS])]), b.i64(`${tag}_e`, [1, KVH, G, HS])]),
      b.i64(`${tag}_b`, [1, -1, D]),
    ]); // [1, t, 9*64]: query head h reads KV head floor(h / G)
  const keys = rep(b.op('Concat', [pastK, kNew], { axis: 0 }), 'k');
  const values = rep(b.op('Concat', [pastV, vNew], { axis: 0 }), 'v');
  const keyPos = b.op('Concat', [pastPos, pos], { axis: 0 });
  const visible = b.op('LessOrEqual', [
    b.op('Unsqueeze', [keyPos, b.i64('ax0', [0])]),
    b.op('Unsqueeze', [pos, b.i64('ax1b', [1])]),
  ]);
  const bias = b.op('Unsqueeze', [
    b.op('Where', [visible, b.scalar('zero', 0), b.scalar('neg_inf', -1e30)]),
    b.i64('ax01', [0, 1]),
  ]);
  const o = b.op(
    'MultiHeadAttention',
    [b.op('Unsqueeze', [q, b.i64('q0', [0])]), keys, values, '', '', bias],
    { num_heads: H, scale: { float: 1 / Math.sqrt(HS) } },
    { domain: 'com.microsoft' },
  );
  b.output(b.op('Squeeze', [o, b.i64('s0', [0])]), 'o', 'float32', ['q', D]);
  return b.toBytes();
}

function gqa(): Uint8Array {
  const b = new GraphBuilder('gqa');
  const q = b.input('q', 'float32', ['q', D]);
  const kNew = b.input('k', 'float32', ['q', KD]);
  const vNew = b.input('v', 'float32', ['q', KD]);
  const pastK = b.input('past_k', 'float32', ['c', KD]);
  const pastV = b.input('past_v', 'float32', ['c', KD]);
  const seqlens = b.input('seqlens', 'int32', [1]);
  const total = b.input('total', 'int32', []);
  const bnsh = (x: string, tag: string) =>
    b.op('Transpose', [b.op('Reshape', [x, b.i64(`${tag}_r`, [1, -1, KVH, HS])])], { perm: [0, 2, 1, 3] });
  const u = (x: string, tag: string) => b.op('Unsqueeze', [x, b.i64(`${tag}_u`, [0])]);
  const [o] = b.opN(
    'GroupQueryAttention',
    [u(q, 'q'), u(kNew, 'k'), u(vNew, 'v'), bnsh(pastK, 'pk'), bnsh(pastV, 'pv'), seqlens, total],
    { num_heads: H, kv_num_heads: KVH, scale: { float: 1 / Math.sqrt(HS) } },
    { domain: 'com.microsoft', outputs: 3 },
  );
  b.output(b.op('Squeeze', [o, b.i64('s0', [0])]), 'o', 'float32', ['q', D]);
  return b.toBytes();
}

const rand = (n: number, s: number) => Float32Array.from({ length: n }, () => (Math.random() * 2 - 1) * s);

async function main() {
  const { values } = parseArgs({
    options: { tokens: { type: 'string', default: '512,2048' }, reps: { type: 'string', default: '3' } },
  });
  initNodeRuntime();
  const forms = { chunked: chunked(), mha: mha(), gqa: gqa() };
  for (const n of values.tokens.split(',').map(Number)) {
    const chunks = prefillChunks(n, n, H);
    const Q = rand(n * D, 1);
    const K = rand(n * KD, 2);
    const V = rand(n * KD, 1);
    const feedsOf = (a: number, c: number, form: string) => {
      const f = (d: Float32Array, dims: number[]) => new ort.Tensor('float32', d, dims);
      const base: Record<string, ort.Tensor> = {
        q: f(Q.subarray(a * D, c * D), [c - a, D]),
        k: f(K.subarray(a * KD, c * KD), [c - a, KD]),
        v: f(V.subarray(a * KD, c * KD), [c - a, KD]),
        past_k: f(K.subarray(0, a * KD), [a, KD]),
        past_v: f(V.subarray(0, a * KD), [a, KD]),
      };
      if (form === 'gqa') {
        base.seqlens = new ort.Tensor('int32', Int32Array.of(c - 1), [1]);
        base.total = new ort.Tensor('int32', Int32Array.of(c), []);
      } else {
        base.pos = f(
          Float32Array.from({ length: c - a }, (_, j) => a + j),
          [c - a],
        );
        base.past_pos = f(
          Float32Array.from({ length: a }, (_, j) => j),
          [a],
        );
      }
      return base;
    };
    const bounds = Array.from({ length: chunks }, (_, j) => [
      Math.floor((j * n) / chunks),
      Math.floor(((j + 1) * n) / chunks),
    ]);
    let ref: Float32Array[] = [];
    const line: string[] = [];
    for (const [name, bytes] of Object.entries(forms)) {
      let s: ort.InferenceSession;
      try {
        s = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
      } catch (e) {
        line.push(`${name}: ${(e as Error).message.slice(0, 160)}`);
        continue;
      }
      let best = Infinity;
      let outs: Float32Array[] = [];
      try {
        for (let r = 0; r < Number(values.reps) + 1; r++) {
          const t = performance.now();
          const o: Float32Array[] = [];
          for (const [a, c] of bounds) o.push((await s.run(feedsOf(a, c, name))).o.data as Float32Array);
          if (r > 0) best = Math.min(best, performance.now() - t);
          outs = o;
        }
      } catch (e) {
        line.push(`${name}: ${(e as Error).message.slice(0, 200)}`);
        continue;
      }
      if (!ref.length) ref = outs;
      let err = 0;
      for (let j = 0; j < outs.length; j++)
        for (let i = 0; i < outs[j].length; i++) err = Math.max(err, Math.abs(outs[j][i] - ref[j][i]));
      line.push(`${name} ${best.toFixed(1)} ms (max diff ${err.toExponential(1)})`);
      await s.release();
    }
    console.log(`${n} tokens, ${chunks} chunks, one layer's attention: ${line.join('; ')}`);
  }
}

await main();

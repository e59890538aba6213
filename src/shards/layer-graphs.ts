import type { ModelConfig } from '../model/config.js';
import type { LayerWeights } from '../model/checkpoint.js';
import { GraphBuilder } from './onnx-builder.js';
import { EMBED_IO, HEAD_IO, LAYER_IO } from '../model/shard-io.js';
import { quantizeInt8Rows } from './quantize.js';

/**
 * How a weight matrix becomes graph nodes. The f32 strategy is the default; quantized formats
 * plug in here so that the layer math below is written once.
 * `w` is [out, in] row-major (llama2.c layout); the result is x @ w^T.
 */
export type LinearEmitter<M = Float32Array> = (
  b: GraphBuilder,
  x: string,
  name: string,
  w: M,
  out: number,
  inp: number,
) => string;

/** How one kind of matrix becomes graph nodes: the emitter, and row-stacking for fused projections. */
export interface MatrixFormat<M> {
  linear: LinearEmitter<M>;
  /** [sum out_i, in] from [out_i, in] matrices, so one MatMul computes them all */
  stack(ws: M[]): M;
}

/** f32 [out, in] matrices (llama2.c checkpoints) through any of the quantized emitters. */
export function f32Format(linear: LinearEmitter = f32Linear): MatrixFormat<Float32Array> {
  return { linear, stack: (ws) => stackRows(...ws) };
}

/**
 * Revision of the graphs these builders emit. Bump it with every change to the emitted ops, so that
 * shards built by an older revision are rebuilt (scripts/lib/shard-tasks.ts upToDate).
 * 2: RMSNorm as SimplifiedLayerNormalization.
 * 3: RoPE of queries and keys in one RotaryEmbedding kernel.
 * 4: GGUF matrices; RoPE frequency factors; embedding and head split by rows.
 * 5: past K/V in the KV cache's format (f32, f16 or int8 rows, decoded in the graph).
 * 6: attn_last averages the last attn_rows query rows.
 * 7: `attn` per query head, averaged over the query rows [from, to) that attn_rows names.
 */
export const GRAPH_REVISION = 7;

export function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = w[r * cols + c];
  return t;
}

export const f32Linear: LinearEmitter = (b, x, name, w, out, inp) =>
  b.op('MatMul', [x, b.f32(name, [inp, out], transpose(w, out, inp))]);

/** Row-stacks several [out_i, in] matrices so one MatMul computes them all (one GEMM, not three). */
export function stackRows(...ws: Float32Array[]): Float32Array {
  const all = new Float32Array(ws.reduce((s, w) => s + w.length, 0));
  let off = 0;
  for (const w of ws) {
    all.set(w, off);
    off += w.length;
  }
  return all;
}

/**
 * RMSNorm as onnxruntime's SimplifiedLayerNormalization (x / sqrt(mean(x^2) + eps) * weight): one
 * kernel instead of seven elementwise nodes, each of which costs a dispatch on every run.
 */
export function rmsNorm(b: GraphBuilder, x: string, weight: Float32Array, eps: number, name: string): string {
  return b.op('SimplifiedLayerNormalization', [x, b.f32(name, [weight.length], weight)], {
    axis: -1,
    epsilon: { float: eps },
  });
}

/**
 * RoPE tables for the rows of `pos` [q] (float positions, any order): cos/sin of pos * theta^(-2j/hs),
 * each [q, hs/2]. Row i belongs to the i-th token, so ropeQK can rotate tokens at arbitrary positions.
 */
export function ropeTables(
  b: GraphBuilder,
  pos: string,
  hs: number,
  theta: number,
  freqFactors?: Float32Array,
): { cos: string; sin: string } {
  // Llama 3's rope scaling divides each frequency by a factor the GGUF stores (rope_freqs.weight).
  const invFreq = Float32Array.from(
    { length: hs / 2 },
    (_, j) => 1 / Math.pow(theta, (2 * j) / hs) / (freqFactors?.[j] ?? 1),
  );
  const angles = b.op('Mul', [b.op('Unsqueeze', [pos, b.i64('rope_ax1', [1])]), b.f32('inv_freq', [hs / 2], invFreq)]);
  return { cos: b.op('Cos', [angles]), sin: b.op('Sin', [angles]) };
}

/**
 * RoPE on adjacent pairs (run.c) for queries and keys in one onnxruntime RotaryEmbedding kernel
 * (interleaved): qk [q, heads*hs] with `heads` = query heads + KV heads, tables from ropeTables.
 * position_ids is the offset 0, so token i reads row i of the tables: its own angles.
 */
export function ropeQK(
  b: GraphBuilder,
  qk: string,
  heads: number,
  hs: number,
  cos: string,
  sin: string,
  tag: string,
): string {
  const batched = b.op('Unsqueeze', [qk, b.i64(`${tag}_ax0`, [0])]); // [1, q, heads*hs]
  const rotated = b.op(
    'RotaryEmbedding',
    [batched, b.tensor(`${tag}_offset`, 'int64', [1], BigInt64Array.of(0n)), cos, sin],
    { interleaved: 1, num_heads: heads },
    { domain: 'com.microsoft' },
  );
  return b.op('Squeeze', [rotated, b.i64(`${tag}_ax0s`, [0])]);
}

/**
 * One decoder layer over an arbitrary subset of tokens. Keys are the context tokens followed
 * by the queries; a key is visible to a query iff its position is <= the query's position, so
 * the causal mask follows positions and not the order tokens are fed in.
 */
export function buildLayerGraph<M>(
  cfg: ModelConfig,
  w: LayerWeights<M>,
  layer: number,
  fmt: MatrixFormat<M>,
  ropeFreqFactors?: Float32Array,
): Uint8Array {
  const { linear, stack } = fmt;
  const { dim, hiddenDim, nHeads, nKvHeads, headSize: hs, kvDim } = cfg;
  const group = nHeads / nKvHeads;
  const io = LAYER_IO;
  const b = new GraphBuilder(`layer_${layer}`);
  const x = b.input(io.inputs.x, 'float32', ['q', dim]);
  const pos = b.input(io.inputs.pos, 'float32', ['q']);
  const pastK = pastRows(b, kvDim, io.inputs.pastK, io.inputs.pastKF16, io.inputs.pastKI8, io.inputs.pastKI8Scale); // [c, kvDim]
  const pastV = pastRows(b, kvDim, io.inputs.pastV, io.inputs.pastVF16, io.inputs.pastVI8, io.inputs.pastVI8Scale); // [c, kvDim]
  const pastPos = b.input(io.inputs.pastPos, 'float32', ['c']);
  const attnRows = b.input(io.inputs.attnRows, 'int64', [2]); // [from, to) of this run's query rows

  const { cos, sin } = ropeTables(b, pos, hs, cfg.ropeTheta, ropeFreqFactors); // [q, hs/2]
  const xn = rmsNorm(b, x, w.rmsAtt, cfg.normEps, 'rms_att');
  const qkv = linear(b, xn, 'wqkv', stack([w.wq, w.wk, w.wv]), dim + 2 * kvDim, dim);
  const [qk0, vNew] = b.opN('Split', [qkv, b.i64('qkv_split', [dim + kvDim, kvDim])], { axis: -1 }, { outputs: 2 });
  const qk = ropeQK(b, qk0, nHeads + nKvHeads, hs, cos, sin, 'rope');
  const [qRot, kNew] = b.opN('Split', [qk, b.i64('qk_split', [dim, kvDim])], { axis: -1 }, { outputs: 2 });

  const keys = b.op('Concat', [pastK, kNew], { axis: 0 }); //     [t, kvDim]
  const values = b.op('Concat', [pastV, vNew], { axis: 0 }); //   [t, kvDim]
  const keyPos = b.op('Concat', [pastPos, pos], { axis: 0 }); //  [t]

  // GQA without repeating K/V: queries as [kvHeads, group, q, hs] against keys [kvHeads, 1, hs, t].
  const qh = b.op('Transpose', [b.op('Reshape', [qRot, b.i64('q_heads', [0, nKvHeads, group, hs])])], {
    perm: [1, 2, 0, 3],
  });
  const kvHeads = b.i64('kv_heads', [0, nKvHeads, 1, hs]);
  const kh = b.op('Transpose', [b.op('Reshape', [keys, kvHeads])], { perm: [1, 2, 3, 0] }); //   [kvH, 1, hs, t]
  const vh = b.op('Transpose', [b.op('Reshape', [values, kvHeads])], { perm: [1, 2, 0, 3] }); // [kvH, 1, t, hs]

  const scores = b.op('Mul', [b.op('MatMul', [qh, kh]), b.scalar('scale', 1 / Math.sqrt(hs))]); // [kvH, G, q, t]
  const visible = b.op('LessOrEqual', [
    b.op('Unsqueeze', [keyPos, b.i64('ax0', [0])]), // [1, t]
    b.op('Unsqueeze', [pos, b.i64('ax1b', [1])]), //  [q, 1]
  ]);
  const maskAdd = b.op('Where', [visible, b.scalar('zero', 0), b.scalar('neg_inf', -Infinity)]); // [q, t]
  const probs = b.op('Softmax', [b.op('Add', [scores, maskAdd])], { axis: -1 });
  const ctx = b.op('MatMul', [probs, vh]); // [kvH, G, q, hs]
  const attnOut = b.op('Reshape', [b.op('Transpose', [ctx], { perm: [2, 0, 1, 3] }), b.i64('attn_flat', [0, dim])]);
  const h = b.op('Add', [x, linear(b, attnOut, 'wo', w.wo, dim, dim)]);

  const hn = rmsNorm(b, h, w.rmsFfn, cfg.normEps, 'rms_ffn');
  const gateUp = linear(b, hn, 'w13', stack([w.w1, w.w3]), 2 * hiddenDim, dim);
  const [gate, up] = b.opN('Split', [gateUp, b.i64('w13_split', [hiddenDim, hiddenDim])], { axis: -1 }, { outputs: 2 });
  const act = b.op('Mul', [b.op('Mul', [gate, b.op('Sigmoid', [gate])]), up]);
  const y = b.op('Add', [h, linear(b, act, 'w2', w.w2, dim, hiddenDim)]);

  // Only the named rows' probabilities leave the graph, averaged over the rows but kept per head: the
  // engine reduces heads (mean or max) and pools neighbours itself (src/engine/policy.ts, importance).
  // The rows are the last token's (the paper), a window ending the prompt, or the question's rows.
  const [rowsFrom, rowsTo] = b.opN('Split', [attnRows, b.i64('rows_split', [1, 1])], { axis: 0 }, { outputs: 2 });
  const rows = b.op('Slice', [probs, rowsFrom, rowsTo, b.i64('rows_axis', [2])]); // [kvH, G, r, t]
  const perHead = b.op('ReduceMean', [rows], { axes: [2], keepdims: 0 }); //          [kvH, G, t]
  const attn = b.op('Reshape', [perHead, b.i64('attn_heads', [nHeads, -1])]); //       [heads, t]

  b.output(y, io.outputs.y, 'float32', ['q', dim]);
  b.output(kNew, io.outputs.k, 'float32', ['q', kvDim]);
  b.output(vNew, io.outputs.v, 'float32', ['q', kvDim]);
  b.output(attn, io.outputs.attn, 'float32', [nHeads, 't']);
  return b.toBytes();
}

/**
 * The context's K or V rows as f32 [c, kvDim] from the three forms the KV cache may hold them in
 * (src/engine/kv-rows.ts); two of them are empty on any run. Decoding here rather than in JS means
 * the rows cross into the runtime at their stored size, and the cache keeps no f32 copy.
 */
function pastRows(b: GraphBuilder, kvDim: number, f32: string, f16: string, i8: string, i8Scale: string): string {
  const a = b.input(f32, 'float32', ['c32', kvDim]);
  const h = b.op('Cast', [b.input(f16, 'float16', ['c16', kvDim])], { to: 1 });
  const q = b.op('Mul', [
    b.op('Cast', [b.input(i8, 'int8', ['c8', kvDim])], { to: 1 }),
    b.input(i8Scale, 'float32', ['c8', 1]),
  ]);
  return b.op('Concat', [a, h, q], { axis: 0 });
}

/**
 * Token ids [q] (int64) -> embeddings [q, dim]. With `int8Rows` the table is stored (and held) as
 * int8 rows with one scale per row, and only the q looked-up rows are dequantized on each run.
 */
export function buildEmbedGraph(cfg: ModelConfig, table: Float32Array, int8Rows = false): Uint8Array {
  return embedGraph(cfg.dim, (b, ids) => {
    const rows = table.length / cfg.dim;
    if (!int8Rows) return b.op('Gather', [b.f32('token_embedding', [rows, cfg.dim], table), ids], { axis: 0 });
    const t = quantizeInt8Rows(table, rows, cfg.dim);
    const q = b.op('Gather', [b.tensor('token_embedding_q', 'int8', [rows, cfg.dim], t.q), ids], { axis: 0 }); // [q, dim]
    const scales = b.op('Gather', [b.f32('token_embedding_scale', [rows], t.scales), ids], { axis: 0 }); //     [q]
    return b.op('Mul', [b.op('Cast', [q], { to: 1 }), b.op('Unsqueeze', [scales, b.i64('ax_last', [-1])])]);
  });
}

/** An embedding shard: ids [q] (relative to the part's first row) -> x [q, dim], rows looked up by `rowsOf`. */
export function embedGraph(dim: number, rowsOf: (b: GraphBuilder, ids: string) => string): Uint8Array {
  const b = new GraphBuilder('embed');
  const ids = b.input(EMBED_IO.inputs.ids, 'int64', ['q']);
  b.output(rowsOf(b, ids), EMBED_IO.outputs.x, 'float32', ['q', dim]);
  return b.toBytes();
}

/**
 * Final RMSNorm + classifier: hidden [q, dim] -> logits [q, rows] for the `rows` vocabulary rows
 * of `wcls` (the whole vocabulary, or one part of it when the classifier is split across files).
 */
export function buildHeadGraph<M>(
  cfg: ModelConfig,
  rmsFinal: Float32Array,
  wcls: M,
  rows: number,
  linear: LinearEmitter<M>,
): Uint8Array {
  const b = new GraphBuilder('head');
  const x = b.input(HEAD_IO.inputs.x, 'float32', ['q', cfg.dim]);
  const logits = linear(b, rmsNorm(b, x, rmsFinal, cfg.normEps, 'rms_final'), 'wcls', wcls, rows, cfg.dim);
  b.output(logits, HEAD_IO.outputs.logits, 'float32', ['q', rows]);
  return b.toBytes();
}

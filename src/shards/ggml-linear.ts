/**
 * Graph emitters for matrices kept as a GGUF stores them (src/model/gguf-model.ts GgmlMatrix).
 * Q4_0, Q4_1 and Q8_0 blocks go into the shard as they are (nibbles or int8 values plus one f32 scale,
 * and for Q4_1 one f32 minimum, per block of 32) and are unpacked by plain opset-17 arithmetic on
 * initializers only, which onnxruntime's constant folding turns into one f32 [in, out] initializer
 * when the session is created: the file's exact values, f32 speed, the file's size on the wire.
 * Other types (F16, BF16, Q5_x, K-quants) are decoded here, exactly, and stored as f32.
 */
import { dequantize, f16ToF32 } from '../model/ggml-quants.js';
import type { GgmlMatrix } from '../model/gguf-model.js';
import type { GraphBuilder } from './onnx-builder.js';
import { f32Linear, type LinearEmitter, type MatrixFormat } from './layer-graphs.js';

const FLOAT = 1; // TensorProto.FLOAT, for Cast
const GGML_F32 = 0;
const Q4_0 = 2;
const Q4_1 = 3;
const Q8_0 = 8;
const BLOCK = 32;

/** Types whose blocks the graph unpacks itself; bytes per block as the file stores them. */
const KEPT: Record<number, { blockBytes: number; qsBytes: number; hasMin: boolean }> = {
  [Q4_0]: { blockBytes: 18, qsBytes: 16, hasMin: false },
  [Q4_1]: { blockBytes: 20, qsBytes: 16, hasMin: true },
  [Q8_0]: { blockBytes: 34, qsBytes: 32, hasMin: false },
};

export function keepsBlocks(type: number): boolean {
  return type in KEPT;
}

/** The matrix as f32 [out, in] row-major. */
export function toF32(w: GgmlMatrix): Float32Array {
  return dequantize(w.type, w.data, w.out * w.inp);
}

function asF32Matrix(w: GgmlMatrix): GgmlMatrix {
  if (w.type === GGML_F32) return w;
  const f = toF32(w);
  return { type: GGML_F32, out: w.out, inp: w.inp, data: new Uint8Array(f.buffer, f.byteOffset, f.byteLength) };
}

/** Rows [r0, r1) of a matrix: rows are independent runs of blocks, so a byte slice. */
export function sliceRows(w: GgmlMatrix, r0: number, r1: number): GgmlMatrix {
  const rowBytes = w.data.byteLength / w.out;
  return { type: w.type, out: r1 - r0, inp: w.inp, data: w.data.subarray(r0 * rowBytes, r1 * rowBytes) };
}

/** Row-stacks matrices (wq|wk|wv, w1|w3) so one MatMul computes them; mixed types meet as f32. */
export function stackGgml(ws: GgmlMatrix[]): GgmlMatrix {
  const same = ws.every((w) => w.type === ws[0].type && w.inp === ws[0].inp);
  const parts = same ? ws : ws.map(asF32Matrix);
  const data = new Uint8Array(parts.reduce((s, w) => s + w.data.byteLength, 0));
  let off = 0;
  for (const w of parts) {
    data.set(w.data, off);
    off += w.data.byteLength;
  }
  return { type: parts[0].type, out: parts.reduce((s, w) => s + w.out, 0), inp: ws[0].inp, data };
}

interface Unpacked {
  /** [out, nBlocks, qsBytes] the block's quant bytes (nibble pairs, or int8 values) */
  qs: Uint8Array;
  /** [out, nBlocks] block scales */
  d: Float32Array;
  /** [out, nBlocks] block minimums (Q4_1 only) */
  m?: Float32Array;
}

function unpackBlocks(w: GgmlMatrix): Unpacked {
  const k = KEPT[w.type];
  const nBlocks = (w.out * w.inp) / BLOCK;
  const view = new DataView(w.data.buffer, w.data.byteOffset, w.data.byteLength);
  const qs = new Uint8Array(nBlocks * k.qsBytes);
  const d = new Float32Array(nBlocks);
  const m = k.hasMin ? new Float32Array(nBlocks) : undefined;
  const head = k.hasMin ? 4 : 2;
  for (let i = 0; i < nBlocks; i++) {
    const at = i * k.blockBytes;
    d[i] = f16ToF32(view.getUint16(at, true));
    if (m) m[i] = f16ToF32(view.getUint16(at + 2, true));
    qs.set(w.data.subarray(at + head, at + k.blockBytes), i * k.qsBytes);
  }
  return { qs, d, m };
}

/**
 * The emitted values are the file's, computed in f32 the way ggml-quants.c and the gguf package
 * decode them: Q8_0 q*d; Q4_0 (n-8)*d; Q4_1 n*d + m, where value j of a block is the low nibble of
 * byte j and value j+16 the high one (not MatMulNBits' interleaved order).
 */
function unpackedRows(b: GraphBuilder, name: string, w: GgmlMatrix): string {
  const { out, inp } = w;
  const nb = inp / BLOCK;
  const t = unpackBlocks(w);
  const d = b.f32(`${name}_d`, [out, nb, 1], t.d); // [out, nb, 1]
  let values: string; // [out, nb, 32]
  if (w.type === Q8_0) {
    values = b.op('Cast', [b.tensor(`${name}_qs`, 'int8', [out, nb, BLOCK], t.qs)], { to: FLOAT });
    values = b.op('Mul', [values, d]);
  } else {
    const bytes = b.op('Cast', [b.tensor(`${name}_qs`, 'uint8', [out, nb, BLOCK / 2], t.qs)], { to: FLOAT });
    const hi = b.op('Floor', [b.op('Div', [bytes, b.scalar(`${name}_16`, 16)])]);
    const lo = b.op('Sub', [bytes, b.op('Mul', [hi, b.scalar(`${name}_16b`, 16)])]);
    const nibbles = b.op('Concat', [lo, hi], { axis: -1 });
    values =
      w.type === Q4_1
        ? b.op('Add', [b.op('Mul', [nibbles, d]), b.f32(`${name}_m`, [out, nb, 1], t.m!)])
        : b.op('Mul', [b.op('Sub', [nibbles, b.scalar(`${name}_8`, 8)]), d]);
  }
  return b.op('Reshape', [values, b.i64(`${name}_rows`, [out, inp])]); // [out, in]
}

/** x @ w^T for x [q, in]; kept block types unpacked in the graph (folded at load), the rest f32. */
export const ggmlDequantLinear: LinearEmitter<GgmlMatrix> = (b, x, name, w, out, inp) => {
  if (!keepsBlocks(w.type) || inp % BLOCK !== 0) return f32Linear(b, x, name, toF32(w), out, inp);
  return b.op('MatMul', [x, b.op('Transpose', [unpackedRows(b, name, w)], { perm: [1, 0] })]);
};

export const GGML_DEQUANT: MatrixFormat<GgmlMatrix> = { linear: ggmlDequantLinear, stack: stackGgml };

/**
 * Embedding rows for token ids [q] (int64, already relative to this part's first row) -> [q, dim].
 * Q8_0 tables stay Q8_0 in memory (int8 values + a scale per block; only the looked-up rows are
 * decoded on each run); other types are held as f32 rows.
 */
export function ggmlEmbedRows(b: GraphBuilder, ids: string, table: GgmlMatrix): string {
  const { out: rows, inp: dim } = table;
  if (table.type !== Q8_0) {
    return b.op('Gather', [b.f32('token_embedding', [rows, dim], toF32(table)), ids], { axis: 0 });
  }
  const nb = dim / BLOCK;
  const t = unpackBlocks(table);
  const q = b.op('Gather', [b.tensor('token_embedding_qs', 'int8', [rows, dim], t.qs), ids], { axis: 0 }); // [q, dim]
  const d = b.op('Gather', [b.f32('token_embedding_d', [rows, nb], t.d), ids], { axis: 0 }); //             [q, nb]
  const blocks = b.op('Reshape', [b.op('Cast', [q], { to: FLOAT }), b.i64('emb_blocks', [-1, nb, BLOCK])]);
  const scaled = b.op('Mul', [blocks, b.op('Unsqueeze', [d, b.i64('emb_ax', [-1])])]);
  return b.op('Reshape', [scaled, b.i64('emb_rows', [-1, dim])]);
}

/** Bytes a row of this matrix takes in a shard (what decides how many rows fit one file). */
export function shardRowBytes(w: GgmlMatrix): number {
  const k = KEPT[w.type];
  if (!k || w.inp % BLOCK !== 0) return w.inp * 4;
  const nb = w.inp / BLOCK;
  return nb * (k.qsBytes + 4 + (k.hasMin ? 4 : 0));
}

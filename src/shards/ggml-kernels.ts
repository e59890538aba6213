/**
 * Kernels that keep a GGUF's matrices quantized in memory (src/model/quant.ts GgufKernels), next to
 * ggml-linear.ts's `dequant`, which folds them to f32 at session creation.
 *
 * - nbits: com.microsoft MatMulNBits, 4 bits, blocks of 32 (the file's). A Q4_1 value is n·d + m; MatMulNBits
 *   computes (n − zp)·scale, so the nibbles are repacked (ggml keeps values j and j+16 in byte j, MatMulNBits
 *   keeps 2i and 2i+1 in byte i), scale = d, zp = 0, and the block minimum comes back as a correction:
 *   Σ_k m·x_k over a block = m · (the block's sum of x), i.e. blockSums(x) [q, nb] @ mᵀ [nb, out], an f32
 *   MatMul 1/32 the size of the weights. The products n·d are exact in f32, so this is the file's arithmetic.
 * - nbits-zp: the same nibbles and scales with a float zero point −m/d: (n + m/d)·d, exact up to f32 rounding.
 * - nbits8: MatMulNBits, 8 bits: a Q8_0 value q·d is (q + 128 − 128)·d with the default zero point 128: exact.
 * - integer: int8 per output channel, re-quantized from the file's exact values (quant-linear.ts).
 * Types other than the one a kernel repacks exactly (Q4_1 for 4 bits, Q8_0 for 8) are re-quantized to
 * those blocks first: asymmetric 4-bit (min and (max − min)/15 per 32) or symmetric 8-bit (max|v|/127 per 32).
 */
import { f16ToF32 } from '../model/ggml-quants.js';
import type { GgmlMatrix } from '../model/gguf-model.js';
import type { GgufEmbedKernel, GgufMatrixKernel } from '../model/quant.js';
import type { GraphBuilder } from './onnx-builder.js';
import { matMulNBits, type NBitsShape } from './matmul-nbits.js';
import type { LinearEmitter } from './layer-graphs.js';
import { ggmlDequantLinear, toF32 } from './ggml-linear.js';
import { int8Integer2Linear, int8IntegerLinear } from './quant-linear.js';
import { int8Row2Linear, int8RowLinear, int8RowOutlierLinear } from './int8-rows.js';

/**
 * rowx: the input channels each run takes out of the int8 product to f32 (the run's 32 largest by max|x|), and
 * w2, which takes two int8 terms instead (measured on SmolLM2, docs/PREFILL.md: mean KL at 2048 tokens 4.8e-3 with
 * the row2 head; with w2 in rowx too, 4.9e-3 already with the f32 head, to which an int8 head adds ~1e-3).
 */
export const ROWX_CHANNELS = 32;

const FLOAT = 1; // TensorProto.FLOAT, for Cast
const Q4_1 = 3;
const Q8_0 = 8;
const BLOCK = 32;

/** Asymmetric 4-bit blocks of 32 along `in`: value k of block b of row r = nib·d + m. */
export interface Q4Blocks {
  /** [out, nb, 32] one nibble value (0..15) per input */
  n: Uint8Array;
  /** [out, nb] block scales */
  d: Float32Array;
  /** [out, nb] block minimums */
  m: Float32Array;
}

/** The file's Q4_1 blocks as they are, or any other matrix re-quantized to asymmetric 4-bit blocks. */
export function q4Blocks(w: GgmlMatrix): Q4Blocks {
  const nb = w.inp / BLOCK;
  const count = w.out * nb;
  const n = new Uint8Array(count * BLOCK);
  const d = new Float32Array(count);
  const m = new Float32Array(count);
  if (w.type === Q4_1) {
    const view = new DataView(w.data.buffer, w.data.byteOffset, w.data.byteLength);
    for (let i = 0; i < count; i++) {
      const at = i * 20;
      d[i] = f16ToF32(view.getUint16(at, true));
      m[i] = f16ToF32(view.getUint16(at + 2, true));
      for (let j = 0; j < 16; j++) {
        const byte = w.data[at + 4 + j];
        n[i * BLOCK + j] = byte & 15;
        n[i * BLOCK + j + 16] = byte >> 4;
      }
    }
    return { n, d, m };
  }
  const f = toF32(w);
  for (let i = 0; i < count; i++) {
    let lo = Infinity;
    let hi = -Infinity;
    for (let k = 0; k < BLOCK; k++) {
      const v = f[i * BLOCK + k];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const s = Math.fround((hi - lo) / 15);
    d[i] = s;
    m[i] = lo;
    for (let k = 0; k < BLOCK; k++)
      n[i * BLOCK + k] = s === 0 ? 0 : Math.min(15, Math.max(0, Math.round((f[i * BLOCK + k] - lo) / s)));
  }
  return { n, d, m };
}

/** Symmetric 8-bit blocks of 32: value = q·d. */
export interface Q8Blocks {
  /** [out, nb, 32] */
  q: Int8Array;
  /** [out, nb] */
  d: Float32Array;
}

/** The file's Q8_0 blocks, or any other matrix re-quantized to them. */
export function q8Blocks(w: GgmlMatrix): Q8Blocks {
  const count = (w.out * w.inp) / BLOCK;
  const q = new Int8Array(count * BLOCK);
  const d = new Float32Array(count);
  if (w.type === Q8_0) {
    const view = new DataView(w.data.buffer, w.data.byteOffset, w.data.byteLength);
    for (let i = 0; i < count; i++) {
      d[i] = f16ToF32(view.getUint16(i * 34, true));
      for (let k = 0; k < BLOCK; k++) q[i * BLOCK + k] = view.getInt8(i * 34 + 2 + k);
    }
    return { q, d };
  }
  const f = toF32(w);
  for (let i = 0; i < count; i++) {
    let amax = 0;
    for (let k = 0; k < BLOCK; k++) amax = Math.max(amax, Math.abs(f[i * BLOCK + k]));
    const s = Math.fround(amax / 127);
    d[i] = s;
    for (let k = 0; k < BLOCK; k++)
      q[i * BLOCK + k] = s === 0 ? 0 : Math.max(-127, Math.min(127, Math.round(f[i * BLOCK + k] / s)));
  }
  return { q, d };
}

/** Nibble values [count, 32] -> MatMulNBits bytes [count, 16]: element 2i in the low nibble of byte i, 2i+1 in the high one. */
export function packNBits(n: Uint8Array): Uint8Array {
  const out = new Uint8Array(n.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = n[2 * i] | (n[2 * i + 1] << 4);
  return out;
}

function transposeF32(a: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(a.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = a[r * cols + c];
  return t;
}

/** How a GGUF matrix is held as 4-bit MatMulNBits blocks, and MatMulNBits' accuracy_level (matmul-nbits.ts). */
export interface NBitsOptions {
  floatZeroPoint: boolean;
  accuracyLevel?: NBitsShape['accuracyLevel'];
}

export function nbits4(b: GraphBuilder, x: string, name: string, w: GgmlMatrix, opts: NBitsOptions): string {
  const { out, inp } = w;
  const nb = inp / BLOCK;
  const t = q4Blocks(w);
  const shape: NBitsShape = { K: inp, N: out, bits: 4, blockSize: BLOCK, accuracyLevel: opts.accuracyLevel };
  if (opts.floatZeroPoint) {
    // (n − zp)·d = n·d + m for zp = −m/d. A block with d = 0 is the constant m: scale m, zp −1, nibbles 0.
    const scale = Float32Array.from(t.d, (d, i) => (d === 0 ? t.m[i] : d));
    const zp = Float32Array.from(t.d, (d, i) => (d === 0 ? -1 : -t.m[i] / d));
    const nibbles = t.n.slice();
    t.d.forEach((d, i) => d === 0 && nibbles.fill(0, i * BLOCK, (i + 1) * BLOCK));
    const q = b.tensor(`${name}_q4`, 'uint8', [out, nb, BLOCK / 2], packNBits(nibbles)); // [out, nb, 16]
    const zpT = b.f32(`${name}_zpf`, [out * nb], zp); //                                     [out * nb]
    return matMulNBits(b, x, { q, scales: b.f32(`${name}_scales`, [out * nb], scale), zeroPoints: zpT }, shape);
  }
  const packed = b.tensor(`${name}_q4`, 'uint8', [out, nb, BLOCK / 2], packNBits(t.n)); // [out, nb, 16]
  const scales = b.f32(`${name}_scales`, [out * nb], t.d); //                             [out * nb]
  const zeros = b.tensor(`${name}_zp`, 'uint8', [out * Math.ceil(nb / 2)], new Uint8Array(out * Math.ceil(nb / 2))); // 4-bit zero points, two a byte
  const nd = matMulNBits(b, x, { q: packed, scales, zeroPoints: zeros }, shape); // [q, out]: Σ n·d·x
  const blocks = b.op('Reshape', [x, b.i64(`${name}_xblocks`, [0, nb, BLOCK])]); // [q, nb, 32]
  const sums = b.op('ReduceSum', [blocks, b.i64(`${name}_ax`, [-1])], { keepdims: 0 }); // [q, nb]
  const corr = b.op('MatMul', [sums, b.f32(`${name}_mt`, [nb, out], transposeF32(t.m, out, nb))]); // [q, out]: Σ m·Σx
  return b.op('Add', [nd, corr]);
}

export function nbits8(
  b: GraphBuilder,
  x: string,
  name: string,
  w: GgmlMatrix,
  accuracyLevel?: NBitsShape['accuracyLevel'],
): string {
  const { out, inp } = w;
  const nb = inp / BLOCK;
  const t = q8Blocks(w);
  const u = Uint8Array.from(t.q, (v) => v + 128); // the default 8-bit zero point is 128
  const q = b.tensor(`${name}_q8`, 'uint8', [out, nb, BLOCK], u); // [out, nb, 32]
  return matMulNBits(
    b,
    x,
    { q, scales: b.f32(`${name}_scales`, [out * nb], t.d) },
    { K: inp, N: out, bits: 8, blockSize: BLOCK, accuracyLevel },
  );
}

/** x @ w^T with the given kernel. Matrices whose width is not a multiple of 32 (none in SmolLM2) stay f32. */
export function ggmlLinearFor(kernel: GgufMatrixKernel): LinearEmitter<GgmlMatrix> {
  return (b, x, name, w, out, inp) => {
    if (kernel === 'dequant' || inp % BLOCK !== 0) return ggmlDequantLinear(b, x, name, w, out, inp);
    if (kernel === 'integer') return int8IntegerLinear(b, x, name, toF32(w), out, inp);
    if (kernel === 'integer2') return int8Integer2Linear(b, x, name, toF32(w), out, inp);
    if (kernel === 'row') return int8RowLinear(b, x, name, toF32(w), out, inp);
    if (kernel === 'row2') return int8Row2Linear(b, x, name, toF32(w), out, inp);
    if (kernel === 'rowx' && name === 'w2') return int8Row2Linear(b, x, name, toF32(w), out, inp);
    if (kernel === 'rowx') return int8RowOutlierLinear(ROWX_CHANNELS)(b, x, name, toF32(w), out, inp);
    if (kernel === 'nbits8') return nbits8(b, x, name, w);
    return nbits4(b, x, name, w, { floatZeroPoint: kernel === 'nbits-zp' });
  };
}

/**
 * Embedding rows for ids [q] -> [q, dim] as 4-bit rows (kernel q4): nibbles [rows, nb, 16] in ggml's order
 * (value j low, j+16 high), scale and minimum per block; only the looked-up rows are decoded on each run.
 */
export function q4EmbedRows(b: GraphBuilder, ids: string, table: GgmlMatrix): string {
  const { out: rows, inp: dim } = table;
  const nb = dim / BLOCK;
  const t = q4Blocks(table);
  const bytes = new Uint8Array(rows * nb * 16);
  for (let i = 0; i < rows * nb; i++)
    for (let j = 0; j < 16; j++) bytes[i * 16 + j] = t.n[i * BLOCK + j] | (t.n[i * BLOCK + j + 16] << 4);
  const g = (name: string) => b.op('Gather', [name, ids], { axis: 0 });
  const q = b.op('Cast', [g(b.tensor('token_embedding_q4', 'uint8', [rows, nb, 16], bytes))], { to: FLOAT }); // [q, nb, 16]
  const hi = b.op('Floor', [b.op('Div', [q, b.scalar('emb_16', 16)])]);
  const lo = b.op('Sub', [q, b.op('Mul', [hi, b.scalar('emb_16b', 16)])]);
  const nibbles = b.op('Concat', [lo, hi], { axis: -1 }); // [q, nb, 32]
  const ax = b.i64('emb_ax', [-1]);
  const d = b.op('Unsqueeze', [g(b.f32('token_embedding_d', [rows, nb], t.d)), ax]); // [q, nb, 1]
  const m = b.op('Unsqueeze', [g(b.f32('token_embedding_m', [rows, nb], t.m)), ax]); // [q, nb, 1]
  return b.op('Reshape', [b.op('Add', [b.op('Mul', [nibbles, d]), m]), b.i64('emb_rows', [-1, dim])]);
}

/** Bytes a row takes in a shard with this kernel (what decides how many rows fit one file). */
export function kernelRowBytes(inp: number, kernel: GgufMatrixKernel | GgufEmbedKernel): number {
  const nb = inp / BLOCK;
  switch (kernel) {
    case 'integer':
    case 'integer2':
    case 'row':
    case 'row2':
    case 'rowx':
      return inp + 4;
    case 'nbits8':
    case 'q8':
      return nb * (BLOCK + 4);
    default:
      return nb * (BLOCK / 2 + 8);
  }
}

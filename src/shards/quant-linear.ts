/**
 * LinearEmitters for the quantized formats (src/model/quant.ts). Each takes w [out, in] (llama2.c
 * layout) and emits `x @ w^T` for x [q, in]. The stored tensors of a format are the same whatever
 * the kernel, so shard bytes depend on the format only.
 */
import type { QuantSpec } from '../model/quant.js';
import type { GraphBuilder } from './onnx-builder.js';
import { matMulNBits } from './matmul-nbits.js';
import { f32Linear, type LinearEmitter } from './layer-graphs.js';
import { INT4_ZERO_POINT, quantizeInt4, quantizeInt8 } from './quantize.js';

const FLOAT = 1; // TensorProto.FLOAT, for Cast
const INT32 = 6; // TensorProto.INT32

function int8Tensors(b: GraphBuilder, name: string, w: Float32Array, out: number, inp: number) {
  const t = quantizeInt8(w, out, inp);
  return {
    q: b.tensor(`${name}_q`, 'int8', [inp, out], t.q), //  [in, out]
    scale: b.f32(`${name}_scale`, [out], t.scales), //     [out]
  };
}

/**
 * int8 weights, DequantizeLinear per output channel then an f32 MatMul. Every input of the
 * DequantizeLinear is an initializer, so a session created with `foldDequantize` turns it into one
 * f32 initializer (quantized on the wire, f32 in memory, f32 speed); without it ORT keeps the node
 * and dequantizes the whole matrix on every run.
 */
export const int8DequantLinear: LinearEmitter = (b, x, name, w, out, inp) => {
  const t = int8Tensors(b, name, w, out, inp);
  return b.op('MatMul', [x, b.op('DequantizeLinear', [t.q, t.scale], { axis: 1 })]);
};

/**
 * int8 weights stay int8: activations are quantized per call to uint8 (per tensor, asymmetric),
 * multiplied in integers, and rescaled by x_scale * w_scale[out]. ORT fuses the pattern into
 * DynamicQuantizeMatMul.
 */
export const int8IntegerLinear: LinearEmitter = (b, x, name, w, out, inp) => {
  const t = int8Tensors(b, name, w, out, inp);
  const [xq, xScale, xZero] = b.opN('DynamicQuantizeLinear', [x], {}, { outputs: 3 });
  const acc = b.op('MatMulInteger', [xq, t.q, xZero]); // int32 [q, out]
  return b.op('Mul', [b.op('Cast', [acc], { to: FLOAT }), b.op('Mul', [xScale, t.scale])]);
};

/**
 * int8 weights with the activations in two int8 terms: x ≈ (q1 − z1)·s1 + (q2 − z2)·s2, where the second
 * quantizes what the first missed. Two MatMulIntegers over the same int8 weights: twice the integer work,
 * activation rounding ~256 times smaller than one term's (what int8 activations cost models with outliers).
 */
export const int8Integer2TwoLinear: LinearEmitter = (b, x, name, w, out, inp) => {
  const t = int8AsymTensors(b, name, w, out, inp);
  const [q1, s1, z1] = b.opN('DynamicQuantizeLinear', [x], {}, { outputs: 3 });
  const residual = b.op('Sub', [x, b.op('DequantizeLinear', [q1, s1, z1])]);
  const [q2, s2, z2] = b.opN('DynamicQuantizeLinear', [residual], {}, { outputs: 3 });
  // Each term as Cast(MatMulInteger) · (x_scale · w_scale): the pattern ORT fuses into DynamicQuantizeMatMul
  // (measured on [576 -> 3072]: ~20% faster than rescaling the sum once).
  const term = (q: string, s: string, z: string) =>
    b.op('Mul', [b.op('Cast', [b.op('MatMulInteger', [q, t.q, z, t.zero])], { to: FLOAT }), b.op('Mul', [s, t.scale])]);
  return b.op('Add', [term(q1, s1, z1), term(q2, s2, z2)]);
};

/**
 * integer2: the two terms stacked in one MatMulInteger for matrices wider than they are deep, two products
 * otherwise. Measured at a decode step's one row (quant-bench --decode-ops, 2026-12-02): stacked takes
 * wq|wk|wv 130 us instead of 158, w1|w3 410 instead of 566, a 24576-row classifier part 6.5 ms instead of
 * 11.7 (the weights read once for both rows), but wo 89 instead of 75 and w2 the same 180: its extra small
 * ops cost ~15 us, which only a wide matrix repays. The integers are the same either way.
 */
export const int8Integer2Linear: LinearEmitter = (b, x, name, w, out, inp) =>
  (out > inp ? int8Integer2StackedLinear : int8Integer2TwoLinear)(b, x, name, w, out, inp);

/**
 * integer2's arithmetic with the two activation terms stacked as rows of one MatMulInteger ([2q, in] uint8),
 * so that the int8 weights are read once for both. ORT's MatMulInteger takes one zero point for all of A,
 * so A goes in with none and each term's is taken out after, exactly, in int32:
 *   Σ_k (q_t[k] − z_t)(w[k,n] − zw[n]) = MatMulInteger(q_t, w, 0, zw)[n] − z_t · c[n],  c[n] = Σ_k (w[k,n] − zw[n]).
 * A candidate for decode (quant-bench --decode-ops measures it against integer2 at the decode shapes).
 */
export const int8Integer2StackedLinear: LinearEmitter = (b, x, name, w, out, inp) => {
  const t = int8AsymTensors(b, name, w, out, inp);
  const [q1, s1, z1] = b.opN('DynamicQuantizeLinear', [x], {}, { outputs: 3 });
  const residual = b.op('Sub', [x, b.op('DequantizeLinear', [q1, s1, z1])]);
  const [q2, s2, z2] = b.opN('DynamicQuantizeLinear', [residual], {}, { outputs: 3 });
  const one = b.i64(`${name}_one`, [1]);
  const pair = (u: string, v: string) =>
    b.op('Concat', [b.op('Reshape', [u, one]), b.op('Reshape', [v, one])], { axis: 0 }); // [2]
  const halves = b.i64(`${name}_halves`, [2, 1, 1]);
  const acc = b.op('Reshape', [
    b.op('MatMulInteger', [b.op('Concat', [q1, q2], { axis: 0 }), t.q, '', t.zero]),
    b.i64(`${name}_2qn`, [2, -1, out]),
  ]); // int32 [2, q, out]
  const zs = b.op('Reshape', [b.op('Cast', [pair(z1, z2)], { to: INT32 }), halves]); // int32 [2, 1, 1]
  const centred = b.op('Sub', [acc, b.op('Mul', [zs, t.colSums])]); // int32 [2, q, out], exact
  const terms = b.op('Mul', [b.op('Cast', [centred], { to: FLOAT }), b.op('Reshape', [pair(s1, s2), halves])]);
  return b.op('Mul', [b.op('ReduceSum', [terms, b.i64(`${name}_ax0`, [0])], { keepdims: 0 }), t.scale]); // [q, out]
};

/**
 * int8 per output channel, asymmetric: 255 levels over [min, max] of the row (value = (q − zp)·scale), for
 * rows whose range is not centred on zero (a Q4_1 row's blocks each have their own minimum).
 */
export function int8AsymTensors(b: GraphBuilder, name: string, w: Float32Array, out: number, inp: number) {
  const q = new Int8Array(inp * out); //  [in, out]
  const scale = new Float32Array(out); // [out]
  const zero = new Int8Array(out); //     [out]
  for (let r = 0; r < out; r++) {
    let lo = 0;
    let hi = 0;
    for (let c = 0; c < inp; c++) {
      lo = Math.min(lo, w[r * inp + c]);
      hi = Math.max(hi, w[r * inp + c]);
    }
    const s = Math.fround((hi - lo) / 255) || 1;
    const z = Math.max(-128, Math.min(127, Math.round(-128 - lo / s)));
    scale[r] = s;
    zero[r] = z;
    for (let c = 0; c < inp; c++) q[c * out + r] = Math.max(-128, Math.min(127, Math.round(w[r * inp + c] / s) + z));
  }
  return {
    q: b.tensor(`${name}_q`, 'int8', [inp, out], q),
    scale: b.f32(`${name}_scale`, [out], scale),
    zero: b.tensor(`${name}_zq`, 'int8', [out], zero),
    /** c[n] = Σ_k (q[k,n] − zero[n]): an initializer only for the stacked form, which reads it */
    get colSums() {
      const c = new Int32Array(out);
      for (let k = 0; k < inp; k++) for (let n = 0; n < out; n++) c[n] += q[k * out + n] - zero[n];
      return b.tensor(`${name}_colsum`, 'int32', [out], c);
    },
  };
}

function int4Tensors(b: GraphBuilder, name: string, w: Float32Array, out: number, inp: number, blockSize: number) {
  const t = quantizeInt4(w, out, inp, blockSize);
  return {
    t,
    packed: b.tensor(`${name}_q4`, 'uint8', [out, t.nBlocks, blockSize / 2], t.packed),
    scales: b.f32(`${name}_scales`, [out * t.nBlocks], t.scales),
  };
}

/** int4 weights through com.microsoft MatMulNBits, which dequantizes block by block on every run. */
export function int4NBitsLinear(blockSize: number): LinearEmitter {
  return (b, x, name, w, out, inp) => {
    const { packed, scales } = int4Tensors(b, name, w, out, inp, blockSize);
    return matMulNBits(b, x, { q: packed, scales }, { K: inp, N: out, bits: 4, blockSize });
  };
}

/**
 * int4 weights unpacked in the graph with plain opset-17 arithmetic on initializers only, so ORT's
 * constant folding turns the whole chain into one f32 [in, out] initializer when the session is
 * created: int4 on the wire, f32 in memory and speed.
 */
export function int4DequantLinear(blockSize: number): LinearEmitter {
  return (b, x, name, w, out, inp) => {
    const { t, packed, scales } = int4Tensors(b, name, w, out, inp, blockSize);
    const bytes = b.op('Cast', [packed], { to: FLOAT }); // [out, nBlocks, bs/2]
    const hi = b.op('Floor', [b.op('Div', [bytes, b.scalar(`${name}_16`, 16)])]);
    const lo = b.op('Sub', [bytes, b.op('Mul', [hi, b.scalar(`${name}_16b`, 16)])]);
    const ax = b.i64(`${name}_ax`, [-1]);
    // Element 2k is the low nibble, 2k+1 the high one: interleave as [.., bs/2, 2] then flatten.
    const pairs = b.op('Concat', [b.op('Unsqueeze', [lo, ax]), b.op('Unsqueeze', [hi, ax])], { axis: -1 });
    const nibbles = b.op('Reshape', [pairs, b.i64(`${name}_blocks`, [out, t.nBlocks, blockSize])]);
    const signed = b.op('Sub', [nibbles, b.scalar(`${name}_zp`, INT4_ZERO_POINT)]);
    const scaled = b.op('Mul', [signed, b.op('Reshape', [scales, b.i64(`${name}_sshape`, [out, t.nBlocks, 1])])]);
    let rows = b.op('Reshape', [scaled, b.i64(`${name}_rows`, [out, t.nBlocks * blockSize])]); // [out, padded in]
    if (t.nBlocks * blockSize !== inp) {
      rows = b.op('Slice', [rows, b.i64(`${name}_s0`, [0]), b.i64(`${name}_s1`, [inp]), b.i64(`${name}_s2`, [1])]);
    }
    return b.op('MatMul', [x, b.op('Transpose', [rows], { perm: [1, 0] })]);
  };
}

/** The emitter that builds a format's graphs with the given kernel. */
export function linearFor(q: QuantSpec): LinearEmitter {
  switch (`${q.format}/${q.kernel}`) {
    case 'f32/matmul':
      return f32Linear;
    case 'int8/dequant':
      return int8DequantLinear;
    case 'int8/integer':
      return int8IntegerLinear;
    case 'int4/dequant':
      return int4DequantLinear(q.blockSize!);
    case 'int4/nbits':
      return int4NBitsLinear(q.blockSize!);
    default:
      throw new RangeError(`no kernel ${q.kernel} for ${q.format} weights`);
  }
}

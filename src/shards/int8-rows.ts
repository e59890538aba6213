/**
 * int8 weight products with the activations quantized per row (issue 27): each row of x gets its own
 * scale max|x_row| / 127, so one token's outlier channel costs only that token's precision (the `integer`
 * kernel's DynamicQuantizeLinear has one scale for the whole [rows, in] tensor: a chunk of 128 tokens shares
 * the worst row's range). The rows go in as uint8 with the one zero point 128 (symmetric values in
 * [1, 255]): onnxruntime-web's wasm MLAS has a fast u8·s8 kernel and none for s8·s8 (measured: int8
 * activations run ~20x slower). Weights are int8 per output channel, asymmetric (their zero points go to
 * MatMulInteger as B's per-column zero point, exactly), as integer2 holds them, or symmetric (`sym`).
 *
 * - int8RowLinear:  one term.   y = (MatMulInteger(q, W, 128, zw) · s_row) · w_scale
 * - int8Row2Linear: two terms, the second quantizing the first's residual (x = s1·q1 + s2·q2 + e, |e| ≤ s2/2,
 *   s2 ≈ s1/254: ~16-bit activations), stacked as 2·rows of one MatMulInteger so that the weights are
 *   unpacked once.
 */
import type { GraphBuilder } from './onnx-builder.js';
import type { LinearEmitter } from './layer-graphs.js';
import { int8AsymTensors } from './quant-linear.js';
import { quantizeInt8 } from './quantize.js';

const FLOAT = 1;
const UINT8 = 2;

/** x [rows, in] -> uint8 q [rows, in] (zero point 128) and f32 scale [rows, 1] with x ≈ (q − 128) · scale. */
export function quantizeRows(b: GraphBuilder, x: string, tag: string): { q: string; s: string; centred: string } {
  const amax = b.op('ReduceMax', [b.op('Abs', [x])], { axes: [-1], keepdims: 1 }); // [rows, 1]
  const s = b.op('Div', [b.op('Max', [amax, b.scalar(`${tag}_tiny`, 1e-30)]), b.scalar(`${tag}_127`, 127)]);
  const centred = b.op('Round', [b.op('Div', [x, s])]); // integers in [-127, 127]
  const q = b.op('Cast', [b.op('Add', [centred, b.scalar(`${tag}_128`, 128)])], { to: UINT8 });
  return { q, s, centred };
}

function weights(b: GraphBuilder, name: string, w: Float32Array, out: number, inp: number, sym: boolean) {
  if (!sym) return int8AsymTensors(b, name, w, out, inp);
  const t = quantizeInt8(w, out, inp);
  return {
    q: b.tensor(`${name}_q`, 'int8', [inp, out], t.q),
    scale: b.f32(`${name}_scale`, [out], t.scales),
    zero: '',
  };
}

function zp128(b: GraphBuilder, name: string): string {
  return b.tensor(`${name}_azp`, 'uint8', [], Uint8Array.of(128));
}

export function int8RowLinearWith(sym: boolean): LinearEmitter {
  return (b, x, name, w, out, inp) => {
    const t = weights(b, name, w, out, inp, sym);
    const { q, s } = quantizeRows(b, x, `${name}_a`);
    const acc = b.op('Cast', [b.op('MatMulInteger', [q, t.q, zp128(b, name), ...(t.zero ? [t.zero] : [])])], {
      to: FLOAT,
    }); // [rows, out]
    return b.op('Mul', [b.op('Mul', [acc, s]), t.scale]);
  };
}

export function int8Row2LinearWith(sym: boolean): LinearEmitter {
  return (b, x, name, w, out, inp) => {
    const t = weights(b, name, w, out, inp, sym);
    const first = quantizeRows(b, x, `${name}_a1`);
    const residual = b.op('Sub', [x, b.op('Mul', [first.centred, first.s])]);
    const second = quantizeRows(b, residual, `${name}_a2`);
    const stacked = b.op('Concat', [first.q, second.q], { axis: 0 }); // [2 rows, in]
    const acc = b.op('Cast', [b.op('MatMulInteger', [stacked, t.q, zp128(b, name), ...(t.zero ? [t.zero] : [])])], {
      to: FLOAT,
    }); // [2 rows, out]
    const scaled = b.op('Mul', [acc, b.op('Concat', [first.s, second.s], { axis: 0 })]); // [2 rows, out]
    const [a, c] = b.opN('Split', [scaled], { axis: 0 }, { outputs: 2 }); // equal halves: term 1, term 2
    return b.op('Mul', [b.op('Add', [a, c]), t.scale]);
  };
}

export const int8RowLinear = int8RowLinearWith(false);
export const int8Row2Linear = int8Row2LinearWith(false);

/**
 * rowx: one int8 term per row, with the chunk's `k` largest channels taken out and multiplied in f32 (an
 * LLM.int8()-style decomposition chosen per run, no calibration): the channels with the largest max|x| over
 * the run's rows (TopK), their columns of x against those rows of the int8 weights dequantized (a [k, out]
 * f32 slice), plus the rest, whose per-row scale no longer carries the outliers, through MatMulInteger.
 */
export function int8RowOutlierLinear(k: number): LinearEmitter {
  return (b, x, name, w, out, inp) => {
    const t = int8AsymTensors(b, name, w, out, inp);
    const chanMax = b.op('ReduceMax', [b.op('Abs', [x])], { axes: [0], keepdims: 0 }); // [in]
    const [, idx] = b.opN(
      'TopK',
      [chanMax, b.i64(`${name}_k`, [k])],
      { axis: 0, largest: 1, sorted: 0 },
      { outputs: 2 },
    ); // [k]
    const mask = b.op('Sub', [
      b.scalar(`${name}_one`, 1),
      b.op(
        'ReduceMax',
        [b.op('OneHot', [idx, b.i64(`${name}_depth`, [inp]), b.f32(`${name}_onoff`, [2], [0, 1])], { axis: -1 })],
        {
          axes: [0],
          keepdims: 0,
        },
      ),
    ]); // [in]: 0 on the k channels
    const { q, s } = quantizeRows(b, b.op('Mul', [x, mask]), `${name}_a`);
    const acc = b.op('Cast', [b.op('MatMulInteger', [q, t.q, zp128(b, name), t.zero])], { to: FLOAT });
    const main = b.op('Mul', [b.op('Mul', [acc, s]), t.scale]);
    // the k channels: x[:, idx] @ ((Wq[idx, :] − zw) · w_scale)
    const wRows = b.op('Mul', [
      b.op('Sub', [
        b.op('Cast', [b.op('Gather', [t.q, idx], { axis: 0 })], { to: FLOAT }),
        b.op('Cast', [t.zero], { to: FLOAT }),
      ]),
      t.scale,
    ]); // [k, out]
    const side = b.op('MatMul', [b.op('Gather', [x, idx], { axis: 1 }), wRows]); // [rows, out]
    return b.op('Add', [main, side]);
  };
}

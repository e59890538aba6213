/**
 * Weight quantization, pure functions over typed arrays (no ORT, no graphs), so that the error
 * bounds can be tested directly. Matrices arrive the way llama2.c stores them: w [out, in]
 * row-major, output row r = one output channel.
 *
 * - int8: per-output-channel symmetric. scale[r] = max|w[r, :]| / 127, q = round(w / scale) in
 *   [-127, 127], w' = q * scale. Every element is off by at most scale[r] / 2.
 * - int4: block-wise symmetric along the input dimension. Row r is cut into blocks of `blockSize`
 *   inputs (the last one may be short); scale[r, b] = max|block| / 7, q in [-7, 7], w' = q * scale.
 *   Every element is off by at most its block's scale / 2. Stored as unsigned nibbles q + 8 in
 *   com.microsoft MatMulNBits' layout, so the same bytes feed both int4 kernels.
 */

export const INT8_MAX = 127;
export const INT4_MAX = 7;
/** MatMulNBits' implicit zero point for 4 bits: a stored nibble n means n - 8. */
export const INT4_ZERO_POINT = 8;

export interface Int8Weights {
  /** [in, out] row-major: already transposed for `x @ W` (MatMul / MatMulInteger / DequantizeLinear axis 1) */
  q: Int8Array;
  /** [out] one scale per output channel */
  scales: Float32Array;
  out: number;
  inp: number;
}

export interface Int4Weights {
  /** [out, nBlocks, blockSize / 2] two nibbles per byte, element 2k in the low nibble; a short last block is padded with zeros (nibble 8) */
  packed: Uint8Array;
  /** [out, nBlocks] one scale per block of `blockSize` inputs */
  scales: Float32Array;
  out: number;
  inp: number;
  blockSize: number;
  nBlocks: number;
}

/** Valid int4 block sizes: what MatMulNBits accepts (a power of two, at least 16). */
export function checkBlockSize(blockSize: number): string | null {
  if (!Number.isInteger(blockSize) || blockSize < 16 || blockSize > 4096 || (blockSize & (blockSize - 1)) !== 0) {
    return `block size ${blockSize} must be a power of two between 16 and 4096`;
  }
  return null;
}

function symmetricScale(amax: number, qmax: number): number {
  // Math.fround: the scale is stored as float32, and q is computed against the stored value.
  return Math.fround(amax / qmax);
}

function quantizeValue(v: number, scale: number, qmax: number): number {
  if (scale === 0) return 0;
  const q = Math.round(v / scale);
  return q > qmax ? qmax : q < -qmax ? -qmax : q;
}

/** w [out, in] -> per-output-channel symmetric int8, transposed to [in, out]. */
export function quantizeInt8(w: Float32Array, out: number, inp: number): Int8Weights {
  if (w.length !== out * inp) throw new RangeError(`weights hold ${w.length} values, not ${out} x ${inp}`);
  const q = new Int8Array(out * inp);
  const scales = new Float32Array(out);
  for (let r = 0; r < out; r++) {
    let amax = 0;
    for (let c = 0; c < inp; c++) amax = Math.max(amax, Math.abs(w[r * inp + c]));
    const s = symmetricScale(amax, INT8_MAX);
    scales[r] = s;
    for (let c = 0; c < inp; c++) q[c * out + r] = quantizeValue(w[r * inp + c], s, INT8_MAX);
  }
  return { q, scales, out, inp };
}

/**
 * Row-wise symmetric int8 without the transpose: t [rows, cols] -> q [rows, cols] and scales [rows].
 * For tables read by row (the token embedding: a Gather picks rows, then scales them).
 */
export function quantizeInt8Rows(t: Float32Array, rows: number, cols: number): { q: Int8Array; scales: Float32Array } {
  const { q: qt, scales } = quantizeInt8(t, rows, cols);
  const q = new Int8Array(rows * cols);
  for (let c = 0; c < cols; c++) for (let r = 0; r < rows; r++) q[r * cols + c] = qt[c * rows + r];
  return { q, scales };
}

/** Back to w' [out, in] row-major (llama2.c layout), float32 math as DequantizeLinear does it. */
export function dequantizeInt8(t: Int8Weights): Float32Array {
  const { out, inp } = t;
  const w = new Float32Array(out * inp);
  for (let r = 0; r < out; r++) for (let c = 0; c < inp; c++) w[r * inp + c] = t.q[c * out + r] * t.scales[r];
  return w;
}

/** w [out, in] -> block-wise symmetric int4 in MatMulNBits layout. */
export function quantizeInt4(w: Float32Array, out: number, inp: number, blockSize: number): Int4Weights {
  if (w.length !== out * inp) throw new RangeError(`weights hold ${w.length} values, not ${out} x ${inp}`);
  const bad = checkBlockSize(blockSize);
  if (bad) throw new RangeError(bad);
  const nBlocks = Math.ceil(inp / blockSize);
  const blob = blockSize / 2;
  const packed = new Uint8Array(out * nBlocks * blob).fill(INT4_ZERO_POINT | (INT4_ZERO_POINT << 4));
  const scales = new Float32Array(out * nBlocks);
  for (let r = 0; r < out; r++) {
    for (let b = 0; b < nBlocks; b++) {
      const c0 = b * blockSize;
      const c1 = Math.min(c0 + blockSize, inp);
      let amax = 0;
      for (let c = c0; c < c1; c++) amax = Math.max(amax, Math.abs(w[r * inp + c]));
      const s = symmetricScale(amax, INT4_MAX);
      scales[r * nBlocks + b] = s;
      const base = (r * nBlocks + b) * blob;
      for (let c = c0; c < c1; c++) {
        const k = c - c0;
        const nibble = quantizeValue(w[r * inp + c], s, INT4_MAX) + INT4_ZERO_POINT;
        const at = base + (k >> 1);
        packed[at] = k & 1 ? (packed[at] & 0x0f) | (nibble << 4) : (packed[at] & 0xf0) | nibble;
      }
    }
  }
  return { packed, scales, out, inp, blockSize, nBlocks };
}

/** The signed int4 value of input c of output row r. */
export function int4At(t: Int4Weights, r: number, c: number): number {
  const b = Math.floor(c / t.blockSize);
  const k = c - b * t.blockSize;
  const byte = t.packed[(r * t.nBlocks + b) * (t.blockSize / 2) + (k >> 1)];
  return (k & 1 ? byte >> 4 : byte & 0x0f) - INT4_ZERO_POINT;
}

/** Back to w' [out, in] row-major. */
export function dequantizeInt4(t: Int4Weights): Float32Array {
  const { out, inp, blockSize, nBlocks } = t;
  const w = new Float32Array(out * inp);
  for (let r = 0; r < out; r++) {
    for (let c = 0; c < inp; c++) w[r * inp + c] = int4At(t, r, c) * t.scales[r * nBlocks + Math.floor(c / blockSize)];
  }
  return w;
}

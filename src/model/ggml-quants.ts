/**
 * Dequantization of GGUF (ggml) tensor types to float32, with the arithmetic of ggml-quants.c
 * `dequantize_row_*` as the `gguf` Python package (0.19.0, maintained with llama.cpp) computes it in
 * numpy: f16 scales are widened to f32, then every product and sum is rounded to f32 in the same
 * order. test/node/ggml-quants.test.ts checks bit equality against fixtures that package wrote
 * (scripts/reference/dequant_fixtures.py).
 *
 * Why the results are bit-identical although JS computes in doubles: each step below is one IEEE
 * operation on f32 operands, done in double and rounded with Math.fround (or by the Float32Array store).
 * A double product of two f32 values is exact, and for + - * a double-then-f32 rounding equals a
 * direct f32 rounding (53 >= 2*24 + 2), so matching numpy's order of operations is enough. In fact
 * every intermediate product of these formats is exact in f32 (an f16 significand has 11 bits; times
 * a <= 7-bit sub-scale and a <= 6-bit quant it stays within 24 bits, and f16 exponents cannot leave the
 * f32 range), so the only rounding is the final `+ m` / `- dmin*m`: an fma-based or reordered
 * implementation would give the same bits too. The frounds mark where numpy rounds all the same.
 *
 * Block layouts (little-endian; "values" are along a row, ne[0]):
 * | type | values | bytes | layout                                                              |
 * | Q4_0 | 32     | 18    | f16 d, u8 qs[16]: v[j] = (lo(qs[j]) - 8)*d, v[j+16] = (hi - 8)*d     |
 * | Q4_1 | 32     | 20    | f16 d, f16 m, u8 qs[16]: v = nibble*d + m (same nibble order)       |
 * | Q5_0 | 32     | 22    | f16 d, u32 qh, u8 qs[16]: bit j of qh is bit 4 of v[j]; (q - 16)*d  |
 * | Q5_1 | 32     | 24    | f16 d, f16 m, u32 qh, u8 qs[16]: q*d + m                            |
 * | Q8_0 | 32     | 34    | f16 d, i8 qs[32]: q*d                                               |
 * | Q4_K | 256    | 144   | f16 d, f16 dmin, u8 scales[12] (8 x 6-bit scale and min), u8 qs[128] |
 * | Q5_K | 256    | 176   | as Q4_K, then u8 qh[32] before qs[128]                              |
 * | Q6_K | 256    | 210   | u8 ql[128], u8 qh[64], i8 scales[16], f16 d (d comes last)          |
 */

export interface GgmlTypeInfo {
  readonly id: number;
  readonly name: string;
  /** values per block (256 for the K-quant super-blocks, 1 for the plain float types) */
  readonly blockValues: number;
  /** bytes per block */
  readonly blockBytes: number;
}

function entry(id: number, name: string, blockValues: number, blockBytes: number): GgmlTypeInfo {
  return Object.freeze({ id, name, blockValues, blockBytes });
}

/** The ggml types this module dequantizes, by ggml type id (the ids GGUF tensor infos store). */
export const GGML_TYPES: Readonly<Record<number, GgmlTypeInfo>> = Object.freeze({
  0: entry(0, 'F32', 1, 4),
  1: entry(1, 'F16', 1, 2),
  2: entry(2, 'Q4_0', 32, 18),
  3: entry(3, 'Q4_1', 32, 20),
  6: entry(6, 'Q5_0', 32, 22),
  7: entry(7, 'Q5_1', 32, 24),
  8: entry(8, 'Q8_0', 32, 34),
  12: entry(12, 'Q4_K', 256, 144),
  13: entry(13, 'Q5_K', 256, 176),
  14: entry(14, 'Q6_K', 256, 210),
  30: entry(30, 'BF16', 1, 2),
});

export function ggmlTypeInfo(id: number): GgmlTypeInfo | undefined {
  // hasOwn, so that ids like "constructor" or 1.5 never reach the prototype or a bogus entry.
  return Number.isInteger(id) && Object.hasOwn(GGML_TYPES, id) ? GGML_TYPES[id] : undefined;
}

/** "Q4_1" for 3; `type 99` for ids this module does not know. */
export function ggmlTypeName(id: number): string {
  return ggmlTypeInfo(id)?.name ?? `type ${id}`;
}

function supportedList(): string {
  return Object.values(GGML_TYPES)
    .map((t) => `${t.name} (${t.id})`)
    .join(', ');
}

function requireType(type: number, what: string): GgmlTypeInfo {
  const info = ggmlTypeInfo(type);
  if (!info)
    throw new RangeError(`${what}: ggml ${ggmlTypeName(type)} is not supported (supported: ${supportedList()})`);
  return info;
}

/** Bytes that nValues values of `type` occupy; throws RangeError for unknown types or partial blocks. */
export function tensorBytes(type: number, nValues: number): number {
  const info = requireType(type, 'tensorBytes');
  if (!Number.isSafeInteger(nValues) || nValues < 0 || nValues % info.blockValues !== 0) {
    throw new RangeError(
      `tensorBytes: ${nValues} values of ${info.name} is not a whole number of ${info.blockValues}-value blocks`,
    );
  }
  return (nValues / info.blockValues) * info.blockBytes;
}

// ---- half-precision scalars -------------------------------------------------------------------

let f16Bits: Uint32Array | null = null; // [65536] f32 bit pattern of each f16 bit pattern
let f16Values: Float32Array | null = null; // the same table as numbers

/**
 * f32 bit pattern of an f16 bit pattern, as numpy's astype(float32) gives it: exact, subnormals
 * normalized, inf kept, NaN payloads shifted up unchanged (signaling NaNs are not quieted).
 */
function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let man = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (man << 13)) >>> 0;
  if (exp === 0) {
    if (man === 0) return sign >>> 0;
    // subnormal: shift the leading 1 up to the implicit bit; each shift lowers the exponent by one.
    let e = -1;
    do {
      man <<= 1;
      e++;
    } while ((man & 0x400) === 0);
    return (sign | ((112 - e) << 23) | ((man & 0x3ff) << 13)) >>> 0;
  }
  return (sign | ((exp + 112) << 23) | (man << 13)) >>> 0;
}

function f16Table(): { bits: Uint32Array; values: Float32Array } {
  if (!f16Bits || !f16Values) {
    // 256 KB once; a table lookup is several times faster than decoding per scale or per F16 value.
    const bits = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) bits[h] = f16BitsToF32Bits(h);
    f16Bits = bits;
    f16Values = new Float32Array(bits.buffer);
  }
  return { bits: f16Bits, values: f16Values };
}

/** [65536] the f32 value of every IEEE half, indexed by its bits: for decoding many halves in a loop. */
export function halfTable(): Float32Array {
  return f16Table().values;
}

/** Value of an IEEE half given as its 16 bits (the low 16 bits of `bits` are used). */
export function f16ToF32(bits: number): number {
  return f16Table().values[bits & 0xffff];
}

/** Value of a bfloat16 given as its 16 bits: the top half of an f32. */
export function bf16ToF32(bits: number): number {
  const u = new Uint32Array([(bits & 0xffff) << 16]);
  return new Float32Array(u.buffer)[0];
}

// ---- dequantization ---------------------------------------------------------------------------

/**
 * Float32 values of nValues values of ggml `type` stored in `data` (exactly tensorBytes(type, nValues)
 * bytes, little-endian, blocks back to back). Throws RangeError for unknown types or a wrong length.
 */
export function dequantize(type: number, data: Uint8Array, nValues: number): Float32Array {
  const info = requireType(type, 'dequantize');
  if (!Number.isSafeInteger(nValues) || nValues < 0 || nValues % info.blockValues !== 0) {
    throw new RangeError(
      `dequantize ${info.name}: ${nValues} values is not a whole number of ${info.blockValues}-value blocks`,
    );
  }
  const nBlocks = nValues / info.blockValues;
  const expected = nBlocks * info.blockBytes;
  if (data.length !== expected) {
    throw new RangeError(
      `dequantize ${info.name}: ${nValues} values take ${expected} bytes (${nBlocks} blocks of ${info.blockBytes}), got ${data.length}`,
    );
  }
  const out = new Float32Array(nValues);
  switch (info.name) {
    case 'F32':
      // Copy the bits: going through numbers could quiet signaling NaNs.
      new Uint8Array(out.buffer).set(data);
      break;
    case 'F16':
      rawF16(data, out);
      break;
    case 'BF16':
      rawBf16(data, out);
      break;
    default:
      for (let b = 0; b < nBlocks; b++) BLOCK_DECODERS[info.name](data, b * info.blockBytes, out, b * info.blockValues);
  }
  return out;
}

/** Row-major [rows, cols] values; ggml rows are whole blocks, so cols must be a multiple of the block size. */
export function dequantizeRows(type: number, data: Uint8Array, rows: number, cols: number): Float32Array {
  const info = requireType(type, 'dequantizeRows');
  if (
    !Number.isSafeInteger(rows) ||
    rows < 0 ||
    !Number.isSafeInteger(cols) ||
    cols < 0 ||
    cols % info.blockValues !== 0
  ) {
    throw new RangeError(
      `dequantizeRows ${info.name}: [${rows}, ${cols}] rows must be whole ${info.blockValues}-value blocks`,
    );
  }
  return dequantize(type, data, rows * cols);
}

function rawF16(data: Uint8Array, out: Float32Array): void {
  const { bits } = f16Table();
  const outBits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < out.length; i++) outBits[i] = bits[data[2 * i] | (data[2 * i + 1] << 8)];
}

function rawBf16(data: Uint8Array, out: Float32Array): void {
  const outBits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < out.length; i++) outBits[i] = ((data[2 * i] << 16) | (data[2 * i + 1] << 24)) >>> 0;
}

type BlockDecoder = (data: Uint8Array, o: number, out: Float32Array, v: number) => void;

const fround = Math.fround;

function half(data: Uint8Array, o: number): number {
  return f16Table().values[data[o] | (data[o + 1] << 8)];
}

function u32(data: Uint8Array, o: number): number {
  return (data[o] | (data[o + 1] << 8) | (data[o + 2] << 16) | (data[o + 3] << 24)) >>> 0;
}

// Q4_0 / Q5_0 / Q8_0: one product q*d per value, stored through the Float32Array (exact anyway: an
// 11-bit f16 significand times an integer of at most 8 bits fits in f32's 24).
function q4_0(data: Uint8Array, o: number, out: Float32Array, v: number): void {
  const d = half(data, o);
  for (let j = 0; j < 16; j++) {
    const b = data[o + 2 + j];
    out[v + j] = d * ((b & 15) - 8);
    out[v + j + 16] = d * ((b >> 4) - 8);
  }
}

// Q4_1 / Q5_1: numpy computes (d * q) + m in two f32 operations; d * q is exact, so only the sum rounds.
function q4_1(data: Uint8Array, o: number, out: Float32Array, v: number): void {
  const d = half(data, o);
  const m = half(data, o + 2);
  for (let j = 0; j < 16; j++) {
    const b = data[o + 4 + j];
    out[v + j] = fround(d * (b & 15)) + m;
    out[v + j + 16] = fround(d * (b >> 4)) + m;
  }
}

function q5_0(data: Uint8Array, o: number, out: Float32Array, v: number): void {
  const d = half(data, o);
  const qh = u32(data, o + 2);
  for (let j = 0; j < 16; j++) {
    const b = data[o + 6 + j];
    out[v + j] = d * (((b & 15) | (((qh >>> j) & 1) << 4)) - 16);
    out[v + j + 16] = d * (((b >> 4) | (((qh >>> (j + 16)) & 1) << 4)) - 16);
  }
}

function q5_1(data: Uint8Array, o: number, out: Float32Array, v: number): void {
  const d = half(data, o);
  const m = half(data, o + 2);
  const qh = u32(data, o + 4);
  for (let j = 0; j < 16; j++) {
    const b = data[o + 8 + j];
    out[v + j] = fround(d * ((b & 15) | (((qh >>> j) & 1) << 4))) + m;
    out[v + j + 16] = fround(d * ((b >> 4) | (((qh >>> (j + 16)) & 1) << 4))) + m;
  }
}

function q8_0(data: Uint8Array, o: number, out: Float32Array, v: number): void {
  const d = half(data, o);
  for (let j = 0; j < 32; j++) out[v + j] = d * ((data[o + 2 + j] << 24) >> 24);
}

/**
 * The 8 (scale, min) pairs of a Q4_K/Q5_K super-block, 6 bits each, packed in 12 bytes s[0..11]:
 * pairs 0..3 are the low 6 bits of s[j] and s[j+4]; pairs 4..7 take their low 4 bits from s[j+4]
 * (scale: low nibble, min: high nibble) and their top 2 bits from the spare top bits of s[j-4] / s[j].
 */
function scaleMinK4(data: Uint8Array, s: number, j: number): [number, number] {
  if (j < 4) return [data[s + j] & 63, data[s + j + 4] & 63];
  return [(data[s + j + 4] & 0xf) | ((data[s + j - 4] >> 6) << 4), (data[s + j + 4] >> 4) | ((data[s + j] >> 6) << 4)];
}

// Q4_K / Q5_K: per 32-value sub-block dl = f32(d * sc), ml = f32(dmin * m); then f32(dl * q) - ml.
function q4_K(data: Uint8Array, o: number, out: Float32Array, v: number): void {
  const d = half(data, o);
  const dmin = half(data, o + 2);
  const qs = o + 16;
  for (let i = 0; i < 8; i++) {
    const [sc, m] = scaleMinK4(data, o + 4, i);
    const dl = fround(d * sc);
    const ml = fround(dmin * m);
    const src = qs + 32 * (i >> 1); // sub-blocks 2k and 2k+1 share 32 bytes: low, then high nibbles
    const shift = 4 * (i & 1);
    for (let l = 0; l < 32; l++) out[v + 32 * i + l] = fround(dl * ((data[src + l] >> shift) & 15)) - ml;
  }
}

function q5_K(data: Uint8Array, o: number, out: Float32Array, v: number): void {
  const d = half(data, o);
  const dmin = half(data, o + 2);
  const qh = o + 16; // [32] bit i of qh[l] is bit 4 of value 32*i + l
  const qs = o + 48;
  for (let i = 0; i < 8; i++) {
    const [sc, m] = scaleMinK4(data, o + 4, i);
    const dl = fround(d * sc);
    const ml = fround(dmin * m);
    const src = qs + 32 * (i >> 1);
    const shift = 4 * (i & 1);
    for (let l = 0; l < 32; l++) {
      const q = ((data[src + l] >> shift) & 15) | (((data[qh + l] >> i) & 1) << 4);
      out[v + 32 * i + l] = fround(dl * q) - ml;
    }
  }
}

// Q6_K: 16 sub-blocks of 16 values with int8 scales; value = f32(f32(d * sc) * (q - 32)).
// Each 128-value half h uses ql[64h..64h+63] and qh[32h..32h+31]; its four 32-value groups t take
// the low nibbles of ql[+0..31], of ql[+32..63], then the high nibbles of the same, and bits 2t..2t+1 of qh.
function q6_K(data: Uint8Array, o: number, out: Float32Array, v: number): void {
  const ql = o;
  const qh = o + 128;
  const scales = o + 192;
  const d = half(data, o + 208);
  for (let h = 0; h < 2; h++) {
    for (let t = 0; t < 4; t++) {
      const base = 128 * h + 32 * t;
      const lo = ql + 64 * h + 32 * (t & 1);
      const loShift = 4 * (t >> 1);
      const hi = qh + 32 * h;
      for (let l = 0; l < 32; l++) {
        const idx = base + l;
        const dl = fround(d * ((data[scales + (idx >> 4)] << 24) >> 24));
        const q = (((data[lo + l] >> loShift) & 15) | (((data[hi + l] >> (2 * t)) & 3) << 4)) - 32;
        out[v + idx] = dl * q;
      }
    }
  }
}

const BLOCK_DECODERS: Record<string, BlockDecoder> = {
  Q4_0: q4_0,
  Q4_1: q4_1,
  Q5_0: q5_0,
  Q5_1: q5_1,
  Q8_0: q8_0,
  Q4_K: q4_K,
  Q5_K: q5_K,
  Q6_K: q6_K,
};

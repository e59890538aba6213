/**
 * How the KV cache stores its rows. The layer graphs return f32 K/V, encoded here when written, and
 * take the past rows in the stored format, decoding them themselves (src/shards/layer-graphs.ts): so
 * the rows cross into the runtime at their stored size and no f32 copy is made on this side. The
 * format decides most of a long context's memory (SmolLM2: 46 KB per token in f32, 2048 tokens = 90 MB).
 *
 * | format | bytes per row of width d | error per element                         |
 * |--------|--------------------------|-------------------------------------------|
 * | f32    | 4d                       | none                                      |
 * | f16    | 2d                       | half an f16 ulp: |x| * 2^-11 (normal range) |
 * | int8   | d + 4                    | half a step: max|row| / 254               |
 */
import { halfTable } from '../model/ggml-quants.js';

export const KV_FORMATS = ['f32', 'f16', 'int8'] as const;
export type KvFormat = (typeof KV_FORMATS)[number];

export function isKvFormat(s: string): s is KvFormat {
  return (KV_FORMATS as readonly string[]).includes(s);
}

export function kvRowBytes(format: KvFormat, width: number): number {
  return format === 'f32' ? 4 * width : format === 'f16' ? 2 * width : width + 4;
}

/** Rows of one width, one per token index, in one format; grows by reallocation. */
export interface RowStore {
  readonly format: KvFormat;
  readonly capacity: number;
  /** bytes held (capacity rows) */
  readonly bytes: number;
  grow(capacity: number): void;
  /** Encodes `src` ([width] f32) as row i. */
  write(i: number, src: Float32Array): void;
  /**
   * The given rows, in the order given, as stored ([tokens.length, width] in the format, a view when they are
   * rows 0..n-1), for the layer graph to decode itself: no f32 copy is made on this side.
   */
  take(tokens: Int32Array): RawRows;
  /** Copies row `from` over row `to` as stored (no re-encoding): for compacting a layer's rows. */
  move(to: number, from: number): void;
}

/** Rows in their stored format: what a layer graph takes as its past K or V. */
export type RawRows =
  | { format: 'f32'; data: Float32Array }
  | { format: 'f16'; data: Uint16Array }
  | { format: 'int8'; data: Int8Array; /** [rows] */ scales: Float32Array };

/**
 * Copies the ascending `tokens`' rows of `src` ([capacity, width]) into a new array, one copy per
 * run of consecutive tokens (active sets keep long runs); a view when they are rows 0..n-1.
 * The list may be in any order (a layer's rows are kept in the order they were computed, caches.ts).
 */
function gatherRuns<T extends Float32Array | Uint16Array | Int8Array>(
  src: T,
  width: number,
  tokens: Int32Array,
  make: (n: number) => T,
): T {
  const n = tokens.length;
  let prefix = true;
  for (let j = 0; j < n && prefix; j++) prefix = tokens[j] === j;
  if (prefix) return src.subarray(0, n * width) as T;
  const out = make(n * width);
  for (let j = 0; j < n; ) {
    let e = j + 1;
    while (e < n && tokens[e] === tokens[e - 1] + 1) e++;
    out.set(src.subarray(tokens[j] * width, tokens[e - 1] * width + width), j * width);
    j = e;
  }
  return out;
}

/** Decodes raw rows to f32 ([rows, width]), as the layer graph does. */
export function decodeRows(raw: RawRows, width: number): Float32Array {
  if (raw.format === 'f32') return raw.data;
  const out = new Float32Array(raw.data.length);
  if (raw.format === 'f16') {
    const table = halfTable();
    for (let i = 0; i < out.length; i++) out[i] = table[raw.data[i]];
  } else for (let i = 0; i < out.length; i++) out[i] = raw.data[i] * raw.scales[Math.floor(i / width)];
  return out;
}

class F32Rows implements RowStore {
  readonly format = 'f32';
  /** [capacity, width] */
  private data: Float32Array;
  constructor(
    private readonly width: number,
    public capacity: number,
  ) {
    this.data = new Float32Array(capacity * width);
  }
  get bytes() {
    return this.data.byteLength;
  }
  grow(capacity: number) {
    const d = new Float32Array(capacity * this.width);
    d.set(this.data);
    this.data = d;
    this.capacity = capacity;
  }
  write(i: number, src: Float32Array) {
    this.data.set(src, i * this.width);
  }
  move(to: number, from: number) {
    this.data.copyWithin(to * this.width, from * this.width, (from + 1) * this.width);
  }
  take(tokens: Int32Array): RawRows {
    return { format: 'f32', data: gatherRuns(this.data, this.width, tokens, (n) => new Float32Array(n)) };
  }
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/**
 * IEEE half nearest to x (ties to even); beyond the largest half (65504) it saturates instead of
 * becoming infinity, because one infinite key would turn a whole attention row into NaN.
 */
export function f32ToF16Bits(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let man = u & 0x7fffff;
  if (exp === 0xff) return man ? 0x7e00 : sign | 0x7bff; // NaN stays NaN; infinity saturates
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 31) return sign | 0x7bff;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal
    man |= 0x800000;
    const shift = 14 - e;
    let h = man >>> shift;
    const rem = man & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (man >>> 13);
  const rem = man & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // a carry into the exponent is the right rounding
  return h >= 0x7c00 ? sign | 0x7bff : sign | h;
}

class F16Rows implements RowStore {
  readonly format = 'f16';
  /** [capacity, width] IEEE half bits */
  private data: Uint16Array;
  constructor(
    private readonly width: number,
    public capacity: number,
  ) {
    this.data = new Uint16Array(capacity * width);
  }
  get bytes() {
    return this.data.byteLength;
  }
  grow(capacity: number) {
    const d = new Uint16Array(capacity * this.width);
    d.set(this.data);
    this.data = d;
    this.capacity = capacity;
  }
  write(i: number, src: Float32Array) {
    const o = i * this.width;
    for (let j = 0; j < this.width; j++) this.data[o + j] = f32ToF16Bits(src[j]);
  }
  move(to: number, from: number) {
    this.data.copyWithin(to * this.width, from * this.width, (from + 1) * this.width);
  }
  take(tokens: Int32Array): RawRows {
    return { format: 'f16', data: gatherRuns(this.data, this.width, tokens, (n) => new Uint16Array(n)) };
  }
}

class Int8Rows implements RowStore {
  readonly format = 'int8';
  /** [capacity, width] round(x / scale) */
  private data: Int8Array;
  /** [capacity] max|row| / 127 */
  private scales: Float32Array;
  constructor(
    private readonly width: number,
    public capacity: number,
  ) {
    this.data = new Int8Array(capacity * width);
    this.scales = new Float32Array(capacity);
  }
  get bytes() {
    return this.data.byteLength + this.scales.byteLength;
  }
  grow(capacity: number) {
    const d = new Int8Array(capacity * this.width);
    d.set(this.data);
    const s = new Float32Array(capacity);
    s.set(this.scales);
    this.data = d;
    this.scales = s;
    this.capacity = capacity;
  }
  write(i: number, src: Float32Array) {
    let max = 0;
    for (let j = 0; j < this.width; j++) max = Math.max(max, Math.abs(src[j]));
    const scale = max / 127;
    const inv = scale > 0 ? 1 / scale : 0;
    const o = i * this.width;
    for (let j = 0; j < this.width; j++) this.data[o + j] = Math.round(src[j] * inv);
    this.scales[i] = scale;
  }
  move(to: number, from: number) {
    this.data.copyWithin(to * this.width, from * this.width, (from + 1) * this.width);
    this.scales[to] = this.scales[from];
  }
  take(tokens: Int32Array): RawRows {
    return {
      format: 'int8',
      data: gatherRuns(this.data, this.width, tokens, (n) => new Int8Array(n)),
      scales: gatherRuns(this.scales, 1, tokens, (n) => new Float32Array(n)),
    };
  }
}

export function rowStore(format: KvFormat, width: number, capacity: number): RowStore {
  if (format === 'f32') return new F32Rows(width, capacity);
  if (format === 'f16') return new F16Rows(width, capacity);
  return new Int8Rows(width, capacity);
}

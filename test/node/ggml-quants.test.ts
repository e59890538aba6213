import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  bf16ToF32,
  dequantize,
  dequantizeRows,
  f16ToF32,
  GGML_TYPES,
  ggmlTypeInfo,
  ggmlTypeName,
  tensorBytes,
} from '../../src/model/ggml-quants.js';

// Written by scripts/reference/dequant_fixtures.py from the gguf package's numpy dequantization.
const FIXTURE = new URL('../fixtures/ggml-dequant.json', import.meta.url);

interface DequantCase {
  name: string;
  type: number;
  type_name: string;
  origin: string;
  n_values: number;
  data_b64: string;
  expected_f32_b64: string;
}

interface Fixture {
  source: string;
  type_sizes: Record<string, [number, number]>;
  cases: DequantCase[];
}

const fixture = JSON.parse(readFileSync(FIXTURE, 'utf8')) as Fixture;

/** Base64 to a fresh (so 4-byte aligned) buffer. */
function bytes(b64: string): Uint8Array {
  return new Uint8Array(Buffer.from(b64, 'base64'));
}

/** Expected values as f32 bit patterns: comparing bits keeps -0 vs 0 and NaN payloads honest. */
function expectedBits(c: DequantCase): Uint32Array {
  const b = bytes(c.expected_f32_b64);
  return new Uint32Array(b.buffer, 0, b.length / 4);
}

function hex(u: number): string {
  return `0x${u.toString(16).padStart(8, '0')}`;
}

/** Up to 5 positions where the bits differ, readable in a failure message. */
function mismatches(got: Float32Array, want: Uint32Array): string[] {
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const out: string[] = [];
  if (g.length !== want.length) return [`length ${g.length} != ${want.length}`];
  const w = new Float32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < g.length && out.length < 5; i++) {
    if (g[i] !== want[i]) out.push(`[${i}] got ${got[i]} (${hex(g[i])}), want ${w[i]} (${hex(want[i])})`);
  }
  return out;
}

const TYPE_NAMES = ['F32', 'F16', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0', 'Q4_K', 'Q5_K', 'Q6_K', 'BF16'];

describe('fixture coverage', () => {
  it('comes from the gguf package and covers every supported type', () => {
    expect(fixture.source).toMatch(/^gguf \S+ gguf\.quants\.dequantize$/);
    const names = new Set(fixture.cases.map((c) => c.type_name));
    expect([...names].sort()).toEqual([...TYPE_NAMES].sort());
    expect(
      Object.values(GGML_TYPES)
        .map((t) => t.name)
        .sort(),
    ).toEqual([...TYPE_NAMES].sort());
    // gguf 0.19.0 can quantize these; the others are random blocks only.
    for (const t of ['F16', 'BF16', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0']) {
      expect(
        fixture.cases.some((c) => c.type_name === t && c.origin === 'quantized'),
        t,
      ).toBe(true);
    }
    for (const origin of [
      'shared-gguf:blk.0.attn_q.weight',
      'shared-gguf:token_embd.weight',
      'shared-gguf:blk.0.attn_norm.weight',
    ]) {
      expect(fixture.cases.filter((c) => c.origin === origin).length, origin).toBeGreaterThan(0);
    }
  });

  it('has the block sizes the gguf package declares (GGML_QUANT_SIZES)', () => {
    for (const [id, [blockValues, blockBytes]] of Object.entries(fixture.type_sizes)) {
      const info = ggmlTypeInfo(Number(id));
      expect(info, `type ${id}`).toBeDefined();
      expect({ blockValues: info!.blockValues, blockBytes: info!.blockBytes }, info!.name).toEqual({
        blockValues,
        blockBytes,
      });
      expect(info!.id).toBe(Number(id));
    }
    expect(Object.keys(fixture.type_sizes).sort()).toEqual(Object.keys(GGML_TYPES).sort());
  });
});

describe('dequantize matches gguf.quants.dequantize bit for bit', () => {
  // Every type is bit-exact: the reference does one f32 rounding per numpy operation and never fuses
  // or reorders a sum, and each of our steps is one double operation on f32 values rounded back to f32,
  // which gives the same result (see the module comment). So there is no tolerance here.
  it.each(fixture.cases.map((c) => [`${c.type_name} ${c.origin}: ${c.name}`, c] as const))('%s', (_label, c) => {
    const data = bytes(c.data_b64);
    const want = expectedBits(c);
    expect(ggmlTypeName(c.type)).toBe(c.type_name);
    expect(want.length).toBe(c.n_values);
    expect(tensorBytes(c.type, c.n_values)).toBe(data.length);
    const got = dequantize(c.type, data, c.n_values);
    expect(got.length).toBe(c.n_values);
    expect(mismatches(got, want)).toEqual([]);
    // A fixture of zeros would pass a decoder that ignores its input.
    const distinct = new Set(want).size;
    expect(distinct).toBeGreaterThan(c.n_values >= 64 ? 8 : 1);
  });

  it('dequantizeRows is row-major dequantization of whole-block rows', () => {
    const c = fixture.cases.find((x) => x.origin === 'shared-gguf:blk.0.attn_q.weight')!;
    const data = bytes(c.data_b64);
    const rows = dequantizeRows(c.type, data, 2, c.n_values / 2);
    expect(mismatches(rows, expectedBits(c))).toEqual([]);
    expect(() => dequantizeRows(c.type, data, 16, 16)).toThrow(/Q4_1.*32-value blocks/);
  });
});

describe('f16 and bf16 scalars', () => {
  it('f16ToF32 agrees with numpy on the fixture sweep of f16 bit patterns', () => {
    const sweeps = fixture.cases.filter((c) => c.type_name === 'F16');
    expect(sweeps.length).toBeGreaterThan(0);
    for (const c of sweeps) {
      const data = bytes(c.data_b64);
      const want = new Float32Array(expectedBits(c).buffer);
      for (let i = 0; i < c.n_values; i++) {
        const h = data[2 * i] | (data[2 * i + 1] << 8);
        const v = f16ToF32(h);
        if (Number.isNaN(want[i])) expect(v, hex(h)).toBeNaN();
        else expect(Object.is(v, want[i]), `${hex(h)}: ${v} vs ${want[i]}`).toBe(true);
      }
    }
  });

  it('f16ToF32 follows IEEE binary16', () => {
    expect(f16ToF32(0x3c00)).toBe(1);
    expect(f16ToF32(0xc000)).toBe(-2);
    expect(f16ToF32(0x7bff)).toBe(65504);
    expect(f16ToF32(0x0400)).toBe(2 ** -14);
    expect(f16ToF32(0x0001)).toBe(2 ** -24);
    expect(f16ToF32(0x03ff)).toBe(1023 * 2 ** -24);
    expect(f16ToF32(0x7c00)).toBe(Infinity);
    expect(f16ToF32(0xfc00)).toBe(-Infinity);
    expect(f16ToF32(0x7e00)).toBeNaN();
    expect(Object.is(f16ToF32(0x8000), -0)).toBe(true);
  });

  it('bf16ToF32 is the top half of an f32', () => {
    expect(bf16ToF32(0x3f80)).toBe(1);
    expect(bf16ToF32(0xc040)).toBe(-3);
    expect(bf16ToF32(0x7f80)).toBe(Infinity);
    const c = fixture.cases.find((x) => x.type_name === 'BF16' && x.origin === 'quantized')!;
    const data = bytes(c.data_b64);
    const want = new Float32Array(expectedBits(c).buffer);
    for (let i = 0; i < c.n_values; i++) expect(bf16ToF32(data[2 * i] | (data[2 * i + 1] << 8))).toBe(want[i]);
  });
});

describe('types, sizes and errors', () => {
  it('names types by id', () => {
    expect(ggmlTypeName(3)).toBe('Q4_1');
    expect(ggmlTypeName(14)).toBe('Q6_K');
    expect(ggmlTypeName(99)).toBe('type 99');
    expect(ggmlTypeInfo(4)).toBeUndefined(); // Q4_2, long removed from ggml
    expect(ggmlTypeInfo(1.5)).toBeUndefined();
  });

  it('tensorBytes counts whole blocks and rejects partial ones', () => {
    expect(tensorBytes(3, 576 * 576)).toBe(((576 * 576) / 32) * 20);
    expect(tensorBytes(14, 512)).toBe(420);
    expect(tensorBytes(0, 3)).toBe(12);
    expect(tensorBytes(8, 0)).toBe(0);
    expect(() => tensorBytes(12, 128)).toThrow(RangeError);
    expect(() => tensorBytes(12, 128)).toThrow(/Q4_K/);
    expect(() => tensorBytes(2, -32)).toThrow(/Q4_0/);
    expect(() => tensorBytes(99, 32)).toThrow(/type 99/);
  });

  it.each(Object.values(GGML_TYPES).map((t) => [t.name, t] as const))(
    '%s: wrong byte lengths throw, naming the type',
    (name, t) => {
      const n = 2 * t.blockValues;
      const ok = new Uint8Array(tensorBytes(t.id, n));
      expect(dequantize(t.id, ok, n).length).toBe(n);
      for (const len of [ok.length - 1, ok.length + 1, 0]) {
        expect(() => dequantize(t.id, new Uint8Array(len), n)).toThrow(RangeError);
        expect(() => dequantize(t.id, new Uint8Array(len), n)).toThrow(new RegExp(`${name}.*got ${len}`));
      }
      if (t.blockValues > 1) expect(() => dequantize(t.id, ok, n - 1)).toThrow(new RegExp(name));
    },
  );

  it('unsupported types throw, naming the type', () => {
    expect(() => dequantize(10, new Uint8Array(84), 256)).toThrow(RangeError); // Q2_K: not implemented here
    expect(() => dequantize(10, new Uint8Array(84), 256)).toThrow(/type 10.*not supported/);
    expect(() => dequantize(-1, new Uint8Array(0), 0)).toThrow(/type -1/);
  });
});

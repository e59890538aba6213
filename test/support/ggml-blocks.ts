/** Random ggml blocks for kernel tests: scales and minimums exact in f16, so any decoding error shows. */
import type { GgmlMatrix } from '../../src/model/gguf-model.js';
import { createRng } from '../../src/model/prng.js';

export const Q4_1 = 3;
export const Q8_0 = 8;

/** f16 bits of a value (round to nearest even is not needed: the inputs below are exact in f16). */
function f16Bits(v: number): number {
  const f = new Float32Array([v]);
  const u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = ((u >>> 23) & 0xff) - 127 + 15;
  if (v === 0) return sign;
  return sign | (exp << 10) | ((u >>> 13) & 0x3ff);
}

/** A random [out, inp] matrix in ggml blocks: Q4_1 (d, m, 16 nibble bytes) or Q8_0 (d, 32 int8). */
export function randomBlocks(type: number, out: number, inp: number, seed: number): GgmlMatrix {
  const rng = createRng(seed);
  const rnd = () => rng.next();
  const nb = (out * inp) / 32;
  const bb = type === Q4_1 ? 20 : 34;
  const data = new Uint8Array(nb * bb);
  const view = new DataView(data.buffer);
  for (let i = 0; i < nb; i++) {
    // scales and minimums that are exact in f16: small multiples of 2^-10
    view.setUint16(i * bb, f16Bits((1 + Math.floor(rnd() * 64)) / 1024), true);
    if (type === Q4_1) {
      view.setUint16(i * bb + 2, f16Bits(-Math.floor(rnd() * 512) / 1024), true);
      for (let j = 0; j < 16; j++) data[i * bb + 4 + j] = Math.floor(rnd() * 256);
    } else {
      for (let j = 0; j < 32; j++) view.setInt8(i * bb + 2 + j, Math.floor(rnd() * 255) - 127);
    }
  }
  return { type, out, inp, data };
}

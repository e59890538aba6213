/**
 * Which functions of a wasm binary use SIMD: reads its `name` section and counts, per function
 * body whose name contains one of the given strings, the 0xFD bytes (the SIMD opcode prefix; zero
 * means the function has no SIMD instruction). Run by hand:
 *   npx tsx scripts/bench/peers/wasm-simd.ts node_modules/@wllama/wllama/esm/wasm/wllama.wasm ggml_vec_dot_q
 */
import { readFileSync } from 'node:fs';
import { fail, runMain } from '../../lib/node-env.js';

export function simdBytesByFunction(
  bytes: Uint8Array,
  wanted: string[],
): { name: string; bytes: number; simdPrefixBytes: number }[] {
  let p = 8;
  const uleb = () => {
    let r = 0;
    let s = 0;
    let b: number;
    do {
      b = bytes[p++];
      r += (b & 0x7f) * 2 ** s;
      s += 7;
    } while (b & 0x80);
    return r;
  };
  const sections: { id: number; start: number; size: number }[] = [];
  while (p < bytes.length) {
    const id = bytes[p++];
    const size = uleb();
    sections.push({ id, start: p, size });
    p = p + size;
  }
  // Function indices count imported functions first.
  let imported = 0;
  const imp = sections.find((s) => s.id === 2);
  if (imp) {
    p = imp.start;
    const n = uleb();
    for (let i = 0; i < n; i++) {
      // module and field names: a length, then that many bytes (read the length before moving p)
      for (let k = 0; k < 2; k++) {
        const len = uleb();
        p += len;
      }
      const kind = bytes[p++];
      if (kind === 0) {
        uleb();
        imported++;
      } else if (kind === 1) {
        p++;
        const f = uleb();
        uleb();
        if (f & 1) uleb();
      } else if (kind === 2) {
        const f = uleb();
        uleb();
        if (f & 1) uleb();
      } else if (kind === 3) p += 2;
      else if (kind === 4) {
        p++;
        uleb();
      }
    }
  }
  const names = new Map<number, string>();
  const dec = new TextDecoder();
  for (const s of sections.filter((x) => x.id === 0)) {
    p = s.start;
    const nl = uleb();
    const nm = dec.decode(bytes.subarray(p, p + nl));
    p += nl;
    if (nm !== 'name') continue;
    while (p < s.start + s.size) {
      const sub = bytes[p++];
      const end = uleb() + p;
      if (sub === 1) {
        const n = uleb();
        for (let i = 0; i < n; i++) {
          const idx = uleb();
          const l = uleb();
          names.set(idx, dec.decode(bytes.subarray(p, p + l)));
          p += l;
        }
      }
      p = end;
    }
  }
  const code = sections.find((s) => s.id === 10);
  if (!code) throw new Error('no code section');
  p = code.start;
  const n = uleb();
  const out: { name: string; bytes: number; simdPrefixBytes: number }[] = [];
  for (let i = 0; i < n; i++) {
    const size = uleb();
    const start = p;
    const name = names.get(imported + i) ?? '';
    if (wanted.some((w) => name.includes(w))) {
      let simd = 0;
      for (let j = start; j < start + size; j++) if (bytes[j] === 0xfd) simd++;
      out.push({ name, bytes: size, simdPrefixBytes: simd });
    }
    p = start + size;
  }
  return out;
}

async function main(): Promise<void> {
  const [file, ...wanted] = process.argv.slice(2);
  if (!file || !wanted.length) fail('usage: wasm-simd.ts FILE.wasm NAME_PART...');
  for (const f of simdBytesByFunction(readFileSync(file), wanted))
    process.stdout.write(`${f.name}\t${f.bytes} bytes\t${f.simdPrefixBytes} SIMD-prefix bytes\n`);
}

if (process.argv[1]?.endsWith('wasm-simd.ts')) runMain(main);

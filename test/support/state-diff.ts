import type { SequenceState } from '../../src/engine/caches.js';

/** Byte-exact comparison of two states' contents (tokens, depth, KV rows below depth, Aux Cache); null when equal. */
export function diffStates(a: SequenceState, b: SequenceState): string | null {
  if (a.length !== b.length) return `length ${a.length} vs ${b.length}`;
  const { nLayers } = a.config;
  const same = (x: Float32Array, y: Float32Array) => {
    const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
    const v = new Uint32Array(y.buffer, y.byteOffset, y.length);
    if (u.length !== v.length) return false;
    for (let j = 0; j < u.length; j++) if (u[j] !== v[j]) return false;
    return true;
  };
  for (let i = 0; i < a.length; i++) {
    if (a.tokens[i] !== b.tokens[i]) return `token ${i}: id ${a.tokens[i]} vs ${b.tokens[i]}`;
    if (a.depth[i] !== b.depth[i]) return `token ${i}: depth ${a.depth[i]} vs ${b.depth[i]}`;
    for (let l = 0; l < Math.min(a.depth[i], nLayers); l++) {
      const x = a.kv.row(l, i);
      const y = b.kv.row(l, i);
      if (!same(x.k, y.k)) return `token ${i}: K row of layer ${l} differs`;
      if (!same(x.v, y.v)) return `token ${i}: V row of layer ${l} differs`;
    }
  }
  if (a.aux.size !== b.aux.size) return `Aux Cache holds ${a.aux.size} vs ${b.aux.size} entries`;
  for (const [i, h] of a.aux.entries) {
    const g = b.aux.entries.get(i);
    if (!g || !same(h, g)) return `Aux Cache entry of token ${i} differs`;
  }
  return null;
}

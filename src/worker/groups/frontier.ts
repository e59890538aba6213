import type { Frontier } from '../../engine/step.js';

/** A typed array that owns exactly its elements (a view would send its whole buffer over RPC). */
function own<T extends Int32Array | Float32Array>(a: T): T {
  return (a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? a : a.slice()) as T;
}

/** The frontier with every array its own: what is sent is what it holds. */
export function compactFrontier(f: Frontier): Frontier {
  return {
    ...f,
    active: own(f.active),
    scores: f.scores && own(f.scores),
    carried: own(f.carried),
    hidden: own(f.hidden),
  };
}

/**
 * What the last layer group sends on when classifier objects apply the head: the last token's
 * hidden state alone (lastHidden), not every computed token's, which at a long prefill is the
 * whole prompt's [n, dim] and is of no use after the last layer.
 */
export function lastTokenFrontier(f: Frontier, dim: number): Frontier {
  const q = f.carried.length;
  return {
    ...f,
    active: f.active.slice(-1),
    scores: null,
    carried: f.carried.slice(q - 1),
    hidden: f.hidden.slice((q - 1) * dim, q * dim),
  };
}

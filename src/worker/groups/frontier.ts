import type { Frontier } from '../../engine/step.js';

/** A typed array that owns exactly its elements (a view would send its whole buffer over RPC). */
function own<T extends Int32Array | Float32Array>(a: T): T {
  return (a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? a : a.slice()) as T;
}

/** The frontier with every array its own: what is sent is what it holds. */
export function compactFrontier(f: Frontier): Frontier {
  return { ...f, active: own(f.active), scores: f.scores && own(f.scores), carried: own(f.carried), hidden: own(f.hidden) };
}

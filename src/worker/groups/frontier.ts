import type { Frontier } from '../../engine/step.js';

/**
 * A frontier as it crosses RPC. Through a dense step `active` is every token of the sequence and
 * `carried` exactly the step's new tokens: sent as such, a decode step's frontier would carry one
 * int32 per token of the context (8 KB at 2k tokens) beside one token's hidden state (2.3 KB), at
 * every boundary. Those two cases go as null instead, and are rebuilt on arrival.
 */
export interface WireFrontier extends Omit<Frontier, 'active' | 'carried'> {
  /** [m] as Frontier's, or null: every token 0..start+newTokens.length-1 */
  active: Int32Array | null;
  /** [q] as Frontier's, or null: the step's new tokens start..start+newTokens.length-1 */
  carried: Int32Array | null;
}

/** A typed array that owns exactly its elements (a view would send its whole buffer over RPC). */
function own<T extends Int32Array | Float32Array>(a: T): T {
  return (a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? a : a.slice()) as T;
}

const range = (from: number, to: number) => Int32Array.from({ length: to - from }, (_, i) => from + i);

/** The frontier to send: every array its own, the two implied index lists left out (WireFrontier). */
export function toWire(f: Frontier): WireFrontier {
  const k = f.newTokens.length;
  // Both lists are ascending and unique: their length and first entry tell a full range.
  const allActive = f.active.length === f.start + k;
  const onlyNew = f.carried.length === k && (k === 0 || f.carried[0] === f.start);
  return {
    ...f,
    active: allActive ? null : own(f.active),
    scores: f.scores && own(f.scores),
    carried: onlyNew ? null : own(f.carried),
    hidden: own(f.hidden),
  };
}

/** The frontier a WireFrontier was made from. */
export function fromWire(w: WireFrontier): Frontier {
  const n = w.start + w.newTokens.length;
  return { ...w, active: w.active ?? range(0, n), carried: w.carried ?? range(w.start, n) };
}

/** Bytes a frontier takes on the wire: ids, the index lists sent, scores and hidden rows, plus the layer, start and ranking. */
export function wireBytes(w: WireFrontier): number {
  return (
    4 *
      (w.newTokens.length +
        (w.active?.length ?? 0) +
        (w.scores?.length ?? 0) +
        (w.carried?.length ?? 0) +
        w.hidden.length) +
    8 +
    16
  );
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

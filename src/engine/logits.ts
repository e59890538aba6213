/**
 * Reading one step's logits: the greedy pick, and the float64 log-probabilities that measurements
 * score by (perplexity, KL). The one home of these helpers for the engine's loop and every script.
 */

/** The index of the largest value, the first of equal ones: greedy decoding's token. */
export function argmax(a: ArrayLike<number>): number {
  let b = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i;
  return b;
}

/** log_softmax(logits) in float64. */
export function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(logits, (v) => v - lse);
}

/** -log p(target) under softmax(logits), without materializing the distribution. */
export function tokenNll(logits: Float32Array, target: number): number {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  let s = 0;
  for (const v of logits) s += Math.exp(v - max);
  return -(logits[target] - max - Math.log(s));
}

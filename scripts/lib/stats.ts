/**
 * The small numeric helpers the scripts share (benchmarks, fidelity, calibration): one median and one
 * KL divergence. What reads a single step's logits (argmax, log-softmax, a token's NLL) is the
 * engine's: src/engine/logits.ts.
 */
import { logSoftmax } from '../../src/engine/logits.js';

/** The median; NaN for no values. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** KL(p || q) of two next-token distributions given as logits: how far lazy moves dense's prediction. */
export function klDivergence(pLogits: Float32Array, qLogits: Float32Array): number {
  const lp = logSoftmax(pLogits);
  const lq = logSoftmax(qLogits);
  let kl = 0;
  for (let i = 0; i < lp.length; i++) kl += Math.exp(lp[i]) * (lp[i] - lq[i]);
  return Math.max(0, kl);
}

/**
 * Log-probabilities of generated tokens, for OpenAI's `logprobs` options. A pure function over one
 * step's logits; generate() calls it only when asked (GenerateOptions.logprobs), so a generation
 * without logprobs pays nothing.
 *
 * Which distribution: the model's own, log_softmax(logits) at temperature 1, before any sampling
 * transform (temperature, top-k, top-p). That is what OpenAI reports, and it makes the figures
 * independent of the sampling options: a greedy and a sampled request over the same text give the
 * same logprobs for the same tokens (and a token outside the top-p nucleus still gets a finite
 * value). With temperature 0 it is exactly the distribution the token was picked from (the argmax
 * of the logits is the argmax of log_softmax). Computed in float64 from the float32 logits.
 */

export interface TopLogprob {
  id: number;
  logprob: number;
}

export interface TokenLogprob {
  /** the token generated at this step */
  id: number;
  logprob: number;
  /** the `top` most likely tokens of the step, most likely first (ties: lower id first) */
  top: TopLogprob[];
}

/** OpenAI's limits: chat's top_logprobs 0..20, the legacy completions' logprobs 0..5. */
export const MAX_TOP_LOGPROBS = 20;

/** log(sum(exp(logits))), stable. -Infinity when every logit is -Infinity. */
export function logSumExp(logits: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  if (!Number.isFinite(max)) return max;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

/**
 * The logprob of `id` and the `top` most likely tokens under log_softmax(logits). One pass for the
 * normaliser, one for the top list (kept sorted by insertion: top is at most 20).
 */
export function tokenLogprobs(logits: Float32Array, id: number, top: number): TokenLogprob {
  if (!Number.isInteger(id) || id < 0 || id >= logits.length)
    throw new RangeError(`token id ${id} outside the logits [0, ${logits.length})`);
  if (!Number.isInteger(top) || top < 0 || top > MAX_TOP_LOGPROBS)
    throw new RangeError(`top ${top} must be an integer in 0..${MAX_TOP_LOGPROBS}`);
  const z = logSumExp(logits);
  const k = Math.min(top, logits.length);
  const ids: number[] = [];
  for (let i = 0; i < logits.length && k > 0; i++) {
    const v = logits[i];
    if (ids.length === k && !(v > logits[ids[k - 1]])) continue;
    // first place holding a smaller logit: an equal one keeps the earlier (lower) id in front
    let p = ids.length;
    while (p > 0 && v > logits[ids[p - 1]]) p--;
    ids.splice(p, 0, i);
    if (ids.length > k) ids.pop();
  }
  return { id, logprob: logits[id] - z, top: ids.map((t) => ({ id: t, logprob: logits[t] - z })) };
}

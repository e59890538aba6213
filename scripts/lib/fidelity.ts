/**
 * Lazy-versus-dense fidelity on prompt windows: the measurements behind `npm run eval` and
 * `npm run calibrate`. Dense and lazy run side by side on the same prompt, so speed ratios are
 * not skewed by whatever else the machine is doing at the time.
 */
import { SequenceState } from '../../src/engine/caches.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { runStep } from '../../src/engine/step.js';
import { stepRankings, type Schedule } from '../../src/engine/policy.js';
import { argmax, logSoftmax, median } from './stats.js';

export { argmax, logSoftmax, median };

export interface PromptCase {
  prompt: number[];
  /** the tokens that follow the prompt in the text, for teacher-forced perplexity */
  next: number[];
}

export interface CaseResult {
  tokens: number;
  first_token_agree: boolean;
  kl: number;
  continuation_agreement: number;
  nll_dense: number;
  nll_lazy: number;
  ttft_dense_ms: number;
  ttft_lazy_ms: number;
  prefill_flops_ratio: number;
  prefill_computed_per_layer: number[];
}

export interface Summary {
  prompts: number;
  first_token_agreement: number;
  mean_kl: number;
  ppl_dense: number;
  ppl_lazy: number;
  ppl_change: number;
  continuation_agreement: number;
  ttft_dense_ms: number;
  ttft_lazy_ms: number;
  ttft_speedup: number;
  prefill_flops_ratio: number;
}

/** KL(p || q) of two next-token distributions given as logits: how far lazy moves dense's prediction. */
export function klDivergence(pLogits: Float32Array, qLogits: Float32Array): number {
  const lp = logSoftmax(pLogits);
  const lq = logSoftmax(qLogits);
  let kl = 0;
  for (let i = 0; i < lp.length; i++) kl += Math.exp(lp[i]) * (lp[i] - lq[i]);
  return Math.max(0, kl);
}

/** A prefill, timed, and `feed`: one decode step after it, ranked as generate() ranks them (text: the window signal, if any). */
async function prefill(model: LoadedModel, prompt: number[], schedule: Schedule | null) {
  const seq = new SequenceState(model.config);
  const ranking = stepRankings(schedule?.signal, null);
  const t = performance.now();
  const r = await runStep(model, seq, prompt, { schedule, ranking: ranking(0, prompt.length) });
  const feed = async (token: number) =>
    (await runStep(model, seq, [token], { schedule, ranking: ranking(seq.length, 1) })).logits;
  return { seq, ms: performance.now() - t, feed, ...r };
}

/** Greedy continuation of `steps` tokens after a prefill. */
async function greedy(
  p: { logits: Float32Array; feed: (t: number) => Promise<Float32Array> },
  steps: number,
): Promise<number[]> {
  const out: number[] = [];
  let logits = p.logits;
  for (let s = 0; s < steps; s++) {
    const t = argmax(logits);
    out.push(t);
    if (s + 1 < steps) logits = await p.feed(t);
  }
  return out;
}

/** Sum of -log p(next[k]) when the true text is fed one token at a time after the prompt. */
async function teacherForcedNll(
  p: { logits: Float32Array; feed: (t: number) => Promise<Float32Array> },
  next: number[],
): Promise<number> {
  let nll = 0;
  let logits = p.logits;
  for (let k = 0; k < next.length; k++) {
    nll -= logSoftmax(logits)[next[k]];
    if (k + 1 < next.length) logits = await p.feed(next[k]);
  }
  return nll;
}

export interface EvalOptions {
  /** greedy continuation length compared position by position */
  continuation: number;
  /** timed prefill repetitions per mode (median), alternating dense and lazy */
  reps: number;
}

export async function evaluateCase(
  model: LoadedModel,
  c: PromptCase,
  schedule: Schedule,
  opts: EvalOptions,
): Promise<CaseResult> {
  const dense = await prefill(model, c.prompt, null);
  const lazy = await prefill(model, c.prompt, schedule);
  const td = [dense.ms];
  const tl = [lazy.ms];
  for (let r = 1; r < opts.reps; r++) {
    tl.push((await prefill(model, c.prompt, schedule)).ms);
    td.push((await prefill(model, c.prompt, null)).ms);
  }
  // Continuations and perplexity continue from fresh prefills so that each mode carries its own caches;
  // with no continuation asked (0), perplexity continues from the first prefills (long prompts: half the prefills).
  let agree = 0;
  let [d2, l2] = [dense, lazy];
  if (opts.continuation > 0) {
    const gDense = await greedy(dense, opts.continuation);
    const gLazy = await greedy(lazy, opts.continuation);
    while (agree < gDense.length && gDense[agree] === gLazy[agree]) agree++;
    d2 = await prefill(model, c.prompt, null);
    l2 = await prefill(model, c.prompt, schedule);
  }
  return {
    tokens: c.prompt.length,
    first_token_agree: argmax(dense.logits) === argmax(lazy.logits),
    kl: klDivergence(dense.logits, lazy.logits),
    /** NaN (null in JSON) when no continuation was asked */
    continuation_agreement: opts.continuation > 0 ? agree / opts.continuation : NaN,
    nll_dense: await teacherForcedNll(d2, c.next),
    nll_lazy: await teacherForcedNll(l2, c.next),
    ttft_dense_ms: median(td),
    ttft_lazy_ms: median(tl),
    prefill_flops_ratio: lazy.stats.flops / lazy.stats.denseFlops,
    prefill_computed_per_layer: lazy.stats.computedPerLayer,
  };
}

export function summarize(results: CaseResult[], nextTokens: number): Summary {
  const n = results.length;
  const mean = (f: (r: CaseResult) => number) => results.reduce((s, r) => s + f(r), 0) / n;
  const pplDense = Math.exp(results.reduce((s, r) => s + r.nll_dense, 0) / (n * nextTokens));
  const pplLazy = Math.exp(results.reduce((s, r) => s + r.nll_lazy, 0) / (n * nextTokens));
  const ttftDense = median(results.map((r) => r.ttft_dense_ms));
  const ttftLazy = median(results.map((r) => r.ttft_lazy_ms));
  return {
    prompts: n,
    first_token_agreement: mean((r) => (r.first_token_agree ? 1 : 0)),
    mean_kl: mean((r) => r.kl),
    ppl_dense: pplDense,
    ppl_lazy: pplLazy,
    ppl_change: pplLazy / pplDense - 1,
    continuation_agreement: mean((r) => r.continuation_agreement),
    ttft_dense_ms: ttftDense,
    ttft_lazy_ms: ttftLazy,
    // the median of per-prompt ratios: each ratio compares runs made seconds apart
    ttft_speedup: median(results.map((r) => r.ttft_dense_ms / r.ttft_lazy_ms)),
    prefill_flops_ratio: mean((r) => r.prefill_flops_ratio),
  };
}

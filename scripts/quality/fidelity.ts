/**
 * Lazy-versus-dense fidelity on prompt windows: the measurements behind `npm run eval` and
 * `npm run calibrate`. Dense and lazy run side by side on the same prompt, so speed ratios are
 * not skewed by whatever else the machine is doing at the time.
 */
import { SequenceState } from '../../src/engine/caches.js';
import { decodeLoop, nextStep, type DecodeLoop, type DecodeStep } from '../../src/engine/decode-loop.js';
import { argmax, logSoftmax } from '../../src/engine/logits.js';
import type { LoadedModel } from '../../src/engine/model.js';
import type { Schedule } from '../../src/engine/policy.js';
import { klDivergence, median } from '../lib/stats.js';

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

/** A prefill and the loop that continues it: greedily, or with `forced`, the text's own tokens. */
interface Prefill {
  loop: DecodeLoop;
  first: DecodeStep;
}

/** A prefill (its time: first.stats.ms), ranked as generate() ranks text (the window signal, if any). */
async function prefill(model: LoadedModel, prompt: number[], schedule: Schedule | null, forced?: number[]) {
  const loop = decodeLoop(model, new SequenceState(model.config), prompt, {
    schedule,
    ...(forced ? { pick: (_, k) => forced[k] } : {}),
  });
  return { loop, first: await nextStep(loop) } satisfies Prefill;
}

/** The first `n` tokens of a prefill's continuation; the last one is not fed. */
async function continuation(p: Prefill, n: number): Promise<DecodeStep[]> {
  const out = n > 0 ? [p.first] : [];
  while (out.length < n) out.push(await nextStep(p.loop));
  return out;
}

/** Sum of -log p(next[k]) when the true text is fed one token at a time after the prompt (a `forced` prefill). */
async function teacherForcedNll(p: Prefill, n: number): Promise<number> {
  let nll = 0;
  for (const s of await continuation(p, n)) nll -= logSoftmax(s.logits)[s.token];
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
  // The first prefills continue greedily when a continuation is asked; with none (0), perplexity
  // continues from them (long prompts: half the prefills).
  const forced = opts.continuation > 0 ? undefined : c.next;
  const dense = await prefill(model, c.prompt, null, forced);
  const lazy = await prefill(model, c.prompt, schedule, forced);
  const td = [dense.first.stats.ms];
  const tl = [lazy.first.stats.ms];
  for (let r = 1; r < opts.reps; r++) {
    tl.push((await prefill(model, c.prompt, schedule)).first.stats.ms);
    td.push((await prefill(model, c.prompt, null)).first.stats.ms);
  }
  // Continuations and perplexity continue from fresh prefills so that each mode carries its own caches.
  let agree = 0;
  let [d2, l2] = [dense, lazy];
  if (opts.continuation > 0) {
    const gDense = (await continuation(dense, opts.continuation)).map((s) => s.token);
    const gLazy = (await continuation(lazy, opts.continuation)).map((s) => s.token);
    while (agree < gDense.length && gDense[agree] === gLazy[agree]) agree++;
    d2 = await prefill(model, c.prompt, null, c.next);
    l2 = await prefill(model, c.prompt, schedule, c.next);
  }
  const [dl, ll] = [dense.first.logits, lazy.first.logits];
  return {
    tokens: c.prompt.length,
    first_token_agree: argmax(dl) === argmax(ll),
    kl: klDivergence(dl, ll),
    /** NaN (null in JSON) when no continuation was asked */
    continuation_agreement: opts.continuation > 0 ? agree / opts.continuation : NaN,
    nll_dense: await teacherForcedNll(d2, c.next.length),
    nll_lazy: await teacherForcedNll(l2, c.next.length),
    ttft_dense_ms: median(td),
    ttft_lazy_ms: median(tl),
    prefill_flops_ratio: lazy.first.stats.flops / lazy.first.stats.denseFlops,
    prefill_computed_per_layer: lazy.first.stats.computedPerLayer,
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

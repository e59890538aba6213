/**
 * Running a job, the one path every generation takes: a stateless request and a session turn,
 * with the whole model in this isolate or its layers in a chain of groups. The caller owns the
 * state (a fresh one, or the session's) and picks the runner; everything else (the turn over the
 * state's common prefix, the pruning trace, logprobs, usage) is done here once.
 */
import type { SequenceState } from '../../engine/caches.js';
import type { FinishReason, GenerationStats, StepRunner } from '../../engine/generate.js';
import { TraceRecorder } from '../../engine/trace.js';
import { runTurn, type TurnResult } from '../../engine/turns.js';
import { engineOptions, type Job, type Usage } from './plan.js';
import { LogprobShaper, type ShapedLogprob } from './logprobs.js';
import { prefillFlops, prefillSpeed } from './budget.js';

/** How a job's layers run. */
export interface Runner {
  /** the state the job continues: the caches themselves, or only the tokens when the caches live in groups */
  seq: SequenceState;
  /** absent: the whole model in this isolate (runStep); present: a chain of groups (groups/chain.ts) */
  step?: StepRunner;
  /** each token's depth before the job, where `seq` holds no depths (the groups do) */
  depthBefore?: Uint8Array;
  /** the generation's statistics completed with what only the runner knows (the groups' caches, what crossed their boundaries) */
  finish?(stats: GenerationStats): GenerationStats;
}

export interface JobHooks {
  /** awaited before every decode step: yields, and throws to stop a job nobody waits for */
  beforeStep: () => Promise<void>;
  /** streamed: each piece of text as it is released, with its tokens' logprobs when the job asked for them */
  onText?: (text: string, logprobs?: ShapedLogprob[]) => Promise<void>;
  /** streamed: awaited as the prefill goes */
  onPrefillProgress?: () => Promise<void>;
}

export interface Outcome {
  text: string;
  finishReason: FinishReason;
  usage: Usage;
  stats: GenerationStats;
  /** when the job asked for logprobs and did not stream them: one per completion token */
  logprobs?: ShapedLogprob[];
}

/** The path a job's speed is measured on (job/budget.ts): the model, whole here or split into groups. */
export const budgetPath = (job: Job, split: boolean) => `${job.model.manifest.name}|${split ? 'split' : 'whole'}`;

/** Runs `job` on `runner`'s state: the prompt's longest prefix the state holds is reused, the rest computed, then decoded. */
export async function runJob(
  job: Job,
  runner: Runner,
  hooks: JobHooks,
): Promise<{ outcome: Outcome; turn: TurnResult }> {
  const { model, prompt } = job;
  const tracer = job.trace ? new TraceRecorder(model, runner.seq, job.question, runner.depthBefore) : undefined;
  const shaper = job.logprobs === null ? undefined : new LogprobShaper(model.tokenizer, prompt[prompt.length - 1]);
  const { onText } = hooks;
  const turn = await runTurn(model, runner.seq, prompt, {
    ...engineOptions(job),
    onText: onText && (shaper ? (t, lps) => onText(t, shaper.shape(lps)) : (t) => onText(t)),
    beforeStep: hooks.beforeStep,
    onPrefillProgress: hooks.onPrefillProgress,
    trace: tracer?.hook,
    ...(runner.step ? { step: runner.step } : {}),
  });
  const r = turn.result;
  prefillSpeed.record(
    budgetPath(job, runner.step !== undefined),
    prefillFlops(model.config, r.stats, turn.stats.reused_tokens),
    r.stats.prefill_ms,
  );
  const finished = {
    ...(runner.finish ? runner.finish(r.stats) : r.stats),
    revived_per_layer: turn.stats.revived_per_layer,
  };
  const stats =
    r.finishReason === 'time_limit'
      ? {
          ...finished,
          note: `the request budget (REQUEST_BUDGET_MS) ran out after ${r.tokens.length} of ${job.maxTokens} tokens`,
        }
      : finished;
  const outcome: Outcome = {
    text: r.text,
    finishReason: r.finishReason,
    usage: {
      prompt_tokens: prompt.length,
      completion_tokens: r.tokens.length,
      total_tokens: prompt.length + r.tokens.length,
      prompt_tokens_details: { cached_tokens: turn.stats.reused_tokens },
    },
    stats: tracer ? { ...stats, trace: tracer.result() } : stats,
    ...(shaper && !onText ? { logprobs: shaper.shape(r.logprobs) } : {}),
  };
  return { outcome, turn };
}

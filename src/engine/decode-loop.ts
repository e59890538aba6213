import type { SequenceState } from './caches.js';
import { argmax } from './logits.js';
import type { ModelPart } from './model.js';
import { stepRankings, type Schedule, type TokenSpan } from './policy.js';
import { runStep, type LayerTrace, type StepOptions, type StepStats } from './step.js';

/** One step over `seq`'s sequence; a runner that keeps the caches elsewhere still appends the tokens to `seq`. */
export type StepRunner = (
  seq: SequenceState,
  newTokens: readonly number[],
  opts: StepOptions,
) => Promise<{ logits: Float32Array; stats: StepStats }>;

export interface DecodeLoopOptions {
  /** null = dense */
  schedule: Schedule | null;
  /** the question's [from, to) sequence indices, which signal:query ranks by (GenerateOptions.question) */
  question?: TokenSpan | null;
  trace?: LayerTrace;
  /** awaited as the prefill step goes (StepOptions.progress) */
  onPrefillProgress?: () => void | Promise<void>;
  /** runs each step (default: runStep on the whole model); a split model passes its chain of layer groups */
  step?: StepRunner;
  /**
   * Picks token `index` (0: the first after the prompt) from the logits before it; default greedy
   * (argmax). Asked once per step, in order, so a stateful sampler sees every token it returned;
   * teacher forcing returns the text's own tokens.
   */
  pick?: (logits: Float32Array, index: number) => number;
}

/** One token of a decode and the step it came from. */
export interface DecodeStep {
  /** the token's place after the prompt: 0 for the first */
  index: number;
  token: number;
  /** the logits it was picked from */
  logits: Float32Array;
  /** the step that computed them: the prefill for index 0, then the decode step that fed token index - 1 */
  stats: StepStats;
}

/** What decodeLoop returns: an endless stream of steps, each run when the consumer asks for it. */
export type DecodeLoop = AsyncGenerator<DecodeStep, never, undefined>;

/**
 * The token-level loop every generation runs, after mlx-lm's generate_step: prefills `prompt`
 * (appended to whatever `seq` already holds), then yields each picked token and feeds it back in
 * when asked for the next one. The caller owns the sequence and decides when to stop: a token it
 * does not ask past is never fed, so `seq` holds exactly the tokens that went through the model.
 * Every step ranks as stepRankings orders them, so a replay or a measurement ranks as served.
 */
export async function* decodeLoop(
  model: ModelPart,
  seq: SequenceState,
  prompt: readonly number[],
  opts: DecodeLoopOptions,
): DecodeLoop {
  const runner: StepRunner = opts.step ?? ((s, t, o) => runStep(model, s, t, o));
  const pick = opts.pick ?? argmax;
  const ranking = stepRankings(opts.schedule?.signal, opts.question ?? null);
  let step = await runner(seq, prompt, {
    schedule: opts.schedule,
    trace: opts.trace,
    progress: opts.onPrefillProgress,
    ranking: ranking(seq.length, prompt.length),
  });
  for (let index = 0; ; index++) {
    const token = pick(step.logits, index);
    yield { index, token, logits: step.logits, stats: step.stats };
    step = await runner(seq, [token], { schedule: opts.schedule, trace: opts.trace, ranking: ranking(seq.length, 1) });
  }
}

/** The next step of a loop (which never ends by itself). */
export async function nextStep(loop: DecodeLoop): Promise<DecodeStep> {
  return (await loop.next()).value;
}

/**
 * Chat turns over one SequenceState that lives across requests (a session). A turn is "make the
 * state hold this token sequence, then generate": the state keeps the longest common prefix it
 * already holds, forgets the rest (`truncate`), and runs only the new tokens, with LazyLLM
 * reselecting from all of them (revived tokens come back from the Aux Cache).
 *
 * A `TurnRecord` is everything needed to redo a turn exactly: where it truncated, the prompt tokens
 * it fed, the sampled tokens it fed back, and the schedule. Replaying a session's records in order
 * on an empty state gives a byte-identical state (the engine is deterministic), which is how a
 * session whose stored caches are damaged is rebuilt.
 */
import { SequenceState } from './caches.js';
import { EngineError } from './errors.js';
import { generate, type GenerateOptions, type GenerateResult, type StepRunner } from './generate.js';
import type { LoadedModel } from './model.js';
import { stepRankings, type Schedule, type TokenSpan } from './policy.js';
import { runStep } from './step.js';

export interface TurnRecord {
  /** tokens kept from the state before the turn (the rest was truncated) */
  keep: number;
  /** tokens fed as the turn's prompt step */
  prompt: number[];
  /** sampled tokens fed back by decode steps, in order */
  decoded: number[];
  /** the schedule the turn ran with; null = dense */
  schedule: Schedule | null;
  /** the question's tokens the turn ranked by (signal:query), sequence indices; null when none */
  question: TokenSpan | null;
}

export interface TurnStats {
  /** prompt tokens the state already held and did not compute again */
  reused_tokens: number;
  /** prompt tokens this turn fed (target length - reused) */
  new_prompt_tokens: number;
  /** tokens the state held beyond the common prefix, forgotten because the history diverged */
  truncated_tokens: number;
  /** query rows per layer this turn, over its prefill and decode steps */
  computed_per_layer: number[];
  /** tokens resumed from the Aux Cache per layer this turn */
  revived_per_layer: number[];
  /** what a dense, stateless rerun of the whole history plus this reply would compute per layer */
  dense_rerun_per_layer: number[];
}

export interface TurnResult {
  result: GenerateResult;
  record: TurnRecord;
  stats: TurnStats;
}

/** Length of the longest common prefix of two token sequences. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * Brings `seq` to `target` (reusing its longest common prefix) and generates. At least the last
 * target token is always fed, since its logits start the reply. On failure `seq` is left partly
 * changed: the caller restores it (a session reloads its stored state).
 */
export async function runTurn(
  model: LoadedModel,
  seq: SequenceState,
  target: readonly number[],
  opts: GenerateOptions,
): Promise<TurnResult> {
  if (target.length === 0) throw new EngineError('a turn needs at least one token', 'invalid_request');
  const L = model.config.nLayers;
  const before = seq.length;
  const keep = Math.min(commonPrefix(seq.tokens, target), target.length - 1);
  seq.truncate(keep);
  const prompt = target.slice(keep);
  // Revivals are counted from the steps' own figures: a trace hook here would have every split step
  // send each layer's query list back over RPC whether anyone records a trace or not.
  const result = await generate(model, seq, prompt, opts);
  const decoded = seq.tokens.slice(keep + prompt.length);
  const stats: TurnStats = {
    reused_tokens: keep,
    new_prompt_tokens: prompt.length,
    truncated_tokens: before - keep,
    computed_per_layer: result.stats.computed_per_layer,
    revived_per_layer: result.revivedPerLayer,
    dense_rerun_per_layer: new Array(L).fill(target.length + decoded.length),
  };
  return {
    result,
    record: { keep, prompt: [...prompt], decoded, schedule: opts.schedule, question: opts.question ?? null },
    stats,
  };
}

/**
 * Redoes a recorded turn on `seq`: the same steps with the same tokens, hence the same state.
 * `step` runs them (default: the whole model here; a split model passes its chain's runner).
 */
export async function replayTurn(
  model: LoadedModel,
  seq: SequenceState,
  r: TurnRecord,
  step: StepRunner = (s, t, o) => runStep(model, s, t, o),
): Promise<void> {
  if (r.keep > seq.length) throw new EngineError(`turn keeps ${r.keep} tokens of ${seq.length}`, 'internal');
  seq.truncate(r.keep);
  const ranking = stepRankings(r.schedule?.signal, r.question);
  await step(seq, r.prompt, { schedule: r.schedule, ranking: ranking(seq.length, r.prompt.length) });
  for (const t of r.decoded) await step(seq, [t], { schedule: r.schedule, ranking: ranking(seq.length, 1) });
}

/** `seq` (a fresh state by default) rebuilt from a session's turn records. */
export async function replayTurns(
  model: LoadedModel,
  records: Iterable<TurnRecord>,
  seq: SequenceState = new SequenceState(model.config),
  step?: StepRunner,
): Promise<SequenceState> {
  for (const r of records) await replayTurn(model, seq, r, step);
  return seq;
}

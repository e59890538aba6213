/**
 * How the benchmark decodes on our engine, in Node (child.ts) and in workerd (worker/):
 * greedy, every token fed back in, so that the step after the last one is timed too (the peers
 * compute the next logits as well); a stop id ends a reply after it, unfed, as the fixtures' replies end.
 */
import type { DecodeLoop, DecodeStep } from '../../src/engine/decode-loop.js';
import { nextStep } from '../../src/engine/decode-loop.js';
import type { StepStats } from '../../src/engine/step.js';

/** Up to `n` tokens from `at` (a step of a greedy loop) on, and the stats of each decode step run. */
export async function benchDecode(
  loop: DecodeLoop,
  at: DecodeStep,
  n: number,
  stop?: readonly number[],
): Promise<{ tokens: number[]; steps: StepStats[] }> {
  const tokens: number[] = [];
  const steps: StepStats[] = [];
  while (tokens.length < n) {
    tokens.push(at.token);
    if (stop?.includes(at.token)) break;
    at = await nextStep(loop);
    steps.push(at.stats);
  }
  return { tokens, steps };
}

/**
 * What one object of a split model does with a full context, for measuring its memory: a layer group
 * prefills N tokens (dense, one step, chunked inside as served) into its own layers' state; the first
 * embeds N token ids if it holds the embedding, a later one receives N synthetic hidden states
 * (memory depends on shapes, not values); the front embeds the prompt (the frontier it sends group 0);
 * an object with classifier rows answers their logits once. Shared by scripts/memory/split-memory.ts (each
 * object in a Node process) and scripts/memory/split-worker/ (each object in a workerd process).
 */
import type { SequenceState } from '../../src/engine/caches.js';
import { groupState } from '../../src/engine/layer-group.js';
import type { ModelPart } from '../../src/engine/model.js';
import { embedStep, runLayers, type Frontier } from '../../src/engine/step.js';
import { headPartLogits } from '../../src/engine/vocab-parts.js';
import { rankingFor } from '../../src/engine/policy.js';

/**
 * Fills `part` at its full context, in steps of at most `stepTokens` tokens (0: one step, as a
 * prefill is served; less: as a front that sends a long prefill in pieces would); answers the state
 * it now holds (null without layers) and its KV + Aux bytes. `sample` is called where a peak may be.
 */
export async function fillPart(
  part: ModelPart,
  sample: () => void = () => undefined,
  stepTokens = 0,
): Promise<{ seq: SequenceState | null; kvAuxBytes: number }> {
  const { dim, vocabSize } = part.config;
  const n = part.config.seqLen;
  const step = stepTokens > 0 ? Math.min(stepTokens, n) : n;
  const seq = part.layerRange.end > part.layerRange.start ? groupState(part.config, part.layerRange) : null;
  for (let at = 0; at < n; at += step) {
    const ids = Array.from({ length: Math.min(step, n - at) }, (_, i) => ((at + i) * 7919) % vocabSize);
    if (seq) {
      let into: Frontier;
      if (part.embed) into = await embedStep(part, at, ids);
      else {
        const hidden = new Float32Array(ids.length * dim); // [step, dim] synthetic, values in [-1, 1)
        for (let i = 0; i < hidden.length; i++) hidden[i] = Math.sin((at * dim + i) * 12.9898) * 0.999;
        const active = Int32Array.from({ length: at + ids.length }, (_, i) => i);
        into = {
          layer: part.layerRange.start,
          start: at,
          newTokens: ids,
          active,
          scores: null,
          ranking: rankingFor(undefined, at, ids.length, null, null),
          carried: active.slice(at),
          hidden,
        };
      }
      await runLayers(part, seq, into, { schedule: null });
      // the step's input and output are dropped after it, as the object drops the RPC's frontiers
    } else if (part.embed) await embedStep(part, at, ids);
    sample();
  }
  if (part.head.length) await headPartLogits(part.head, new Float32Array(dim).fill(0.1), dim);
  sample();
  return { seq, kvAuxBytes: seq ? seq.kv.bytes + seq.aux.bytes : 0 };
}

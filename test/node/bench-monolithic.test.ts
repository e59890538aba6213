import { describe, expect, it } from 'vitest';
import { buildMonolithicGraph, MonolithicDecoder } from '../../scripts/bench/monolithic.js';
import { initNodeRuntime } from '../../scripts/lib/node-env.js';
import { SequenceState } from '../../src/engine/caches.js';
import { runStep } from '../../src/engine/step.js';
import { randomCheckpoint, type Checkpoint } from '../../src/model/checkpoint.js';
import { createGraphSession } from '../../src/runtime/onnx-runtime.js';
import { loadStories260K } from '../support/paths.js';
import { loadCheckpointModel, maxAbsDiff, SMALL_GQA } from '../support/models.js';

/** The benchmark's monolithic export must compute the same model as the per-layer engine. */
async function compare(ck: Checkpoint, prompt: number[], extra: number[]): Promise<number[]> {
  initNodeRuntime();
  const mono = new MonolithicDecoder(await createGraphSession('monolithic', buildMonolithicGraph(ck)), ck.config);
  const model = await loadCheckpointModel(ck);
  const seq = new SequenceState(model.config);
  const diffs = [maxAbsDiff(await mono.step(prompt), (await runStep(model, seq, prompt, { schedule: null })).logits)];
  for (const t of extra)
    diffs.push(maxAbsDiff(await mono.step([t]), (await runStep(model, seq, [t], { schedule: null })).logits));
  return diffs;
}

describe('monolithic benchmark graph (one ONNX graph with past_key_values)', () => {
  it('gives the dense engine logits on stories260K, prefill and decode', async () => {
    const { ck, tok } = loadStories260K();
    const prompt = tok.encode('Once upon a time, there was a little girl named Lily. She loved to play outside.', {
      bos: true,
    });
    for (const d of await compare(ck, prompt, [13, 410, 300])) expect(d).toBeLessThanOrEqual(1e-4);
  });

  it('gives the dense engine logits on a random GQA model', async () => {
    const prompt = Array.from({ length: 40 }, (_, i) => (i * 29 + 3) % 512);
    for (const d of await compare(randomCheckpoint(SMALL_GQA), prompt, [5, 6])) expect(d).toBeLessThanOrEqual(1e-4);
  });
});

import { beforeAll, describe, expect, it } from 'vitest';
import { promptWindows, storyStream } from '../../scripts/lib/prompts.js';
import { SequenceState } from '../../src/engine/caches.js';
import { generate } from '../../src/engine/generate.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { GREEDY } from '../../src/engine/sampler.js';
import { runStep } from '../../src/engine/step.js';
import type { Checkpoint } from '../../src/model/checkpoint.js';
import { devStories, greedySampleText, loadStories260K, seededSampleText } from '../support/paths.js';
import { ReferenceModel } from '../support/reference-forward.js';
import { loadDefaultModel, maxAbsDiff, randomModel } from '../support/models.js';

/** Prefill `prompt` in one step, then decode `extra` tokens; compare each step's logits with the reference. */
async function compareWithReference(
  model: LoadedModel,
  ck: Checkpoint,
  prompt: number[],
  extra: number[],
): Promise<number[]> {
  const ref = new ReferenceModel(ck);
  let refLogits: Float32Array = new Float32Array();
  prompt.forEach((t, pos) => (refLogits = ref.forward(t, pos)));
  const seq = new SequenceState(model.config);
  const diffs = [maxAbsDiff((await runStep(model, seq, prompt, { schedule: null })).logits, refLogits)];
  for (const t of extra) {
    const ours = await runStep(model, seq, [t], { schedule: null });
    diffs.push(maxAbsDiff(ours.logits, ref.forward(t, seq.length - 1)));
  }
  return diffs;
}

describe('dense engine on stories260K', () => {
  let model: LoadedModel;
  const { ck, tok } = loadStories260K();
  beforeAll(async () => {
    model = await loadDefaultModel();
  });

  it.each([
    ['a short sentence', 'Once upon a time, there was a little girl named Lily.'],
    ['a single word', 'Hello'],
    ['unicode via byte fallback', 'The café — naïve 😀'],
  ])('matches the reference forward on %s, prefill and decode', async (_, text) => {
    const diffs = await compareWithReference(model, ck, tok.encode(text, { bos: true }), [13, 410, 300]);
    for (const d of diffs) expect(d).toBeLessThanOrEqual(1e-4);
  });

  it('matches the reference forward on a 512-token prompt from the dev text', async () => {
    // 512 positions is the trained context and the reference's limit: prefill 510, decode the 2 that follow.
    const [{ prompt, next }] = promptWindows(storyStream(tok, devStories()), 510, 2, 1);
    expect([...prompt, ...next]).toHaveLength(512);
    const diffs = await compareWithReference(model, ck, prompt, next);
    for (const d of diffs) expect(d).toBeLessThanOrEqual(1e-4);
  });

  it("reproduces llama2.c's published greedy sample from BOS", async () => {
    const sample = greedySampleText();
    // The sample is run.c's default 256 steps, so it ends mid-story.
    const r = await generate(model, new SequenceState(model.config), [tok.bosId], {
      maxTokens: 256,
      sampler: GREEDY,
      schedule: null,
    });
    expect(r.tokens).toHaveLength(256);
    expect(r.text).toBe(sample);
  });

  it("reproduces llama2.c's seeded sample (-t 1.0 -p 0.9 -s 133742): same sampler, same RNG", async () => {
    const r = await generate(model, new SequenceState(model.config), [tok.bosId], {
      maxTokens: 256,
      sampler: { temperature: 1, topP: 0.9, topK: 0, seed: 133742 },
      schedule: null,
    });
    expect(r.text).toBe(seededSampleText());
  });

  it('gives the same tokens for the same seed and different ones for another seed', async () => {
    const run = (seed: number) =>
      generate(model, new SequenceState(model.config), [tok.bosId], {
        maxTokens: 40,
        sampler: { temperature: 1, topP: 0.95, topK: 40, seed },
        schedule: null,
      });
    const [a, b, c] = await Promise.all([run(5), run(5), run(6)]);
    expect(a.tokens).toEqual(b.tokens);
    expect(c.tokens).not.toEqual(a.tokens);
  });

  it('stops at a stop string and excludes it from the text', async () => {
    const r = await generate(model, new SequenceState(model.config), [tok.bosId], {
      maxTokens: 100,
      sampler: GREEDY,
      schedule: null,
      stop: ['Lily'],
    });
    expect(r.text).toBe('Once upon a time, there was a little girl named ');
    expect(r.finishReason).toBe('stop');
  });
});

describe('dense engine on a seeded random GQA model (not tied to stories260K shapes)', () => {
  const { ck, model } = randomModel();

  it('matches the reference forward, prefill and decode', async () => {
    const m = await model;
    expect(m.config).toMatchObject({ nLayers: 3, dim: 96, nHeads: 6, nKvHeads: 2 });
    const prompt = Array.from({ length: 70 }, (_, i) => (i * 37 + 1) % 512);
    const diffs = await compareWithReference(m, ck, prompt, [5, 6, 7]);
    for (const d of diffs) expect(d).toBeLessThanOrEqual(1e-4);
  });
});

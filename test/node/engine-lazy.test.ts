import { beforeAll, describe, expect, it } from 'vitest';
import { promptWindows, storyStream } from '../../scripts/lib/prompts.js';
import { SequenceState } from '../../src/engine/caches.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { defaultSchedule, keepAt, parseSchedule, type Schedule } from '../../src/engine/policy.js';
import { Sampler } from '../../src/engine/sampler.js';
import { runStep, type LayerTrace } from '../../src/engine/step.js';
import { devStories, loadStories260K } from '../support/paths.js';
import { loadDefaultModel, maxAbsDiff, randomModel } from '../support/models.js';

/** Counts, per layer, how many times each token was a query. */
function computeCounter(nLayers: number) {
  const counts = Array.from({ length: nLayers }, () => new Map<number, number>());
  const revivals: { layer: number; token: number }[] = [];
  const trace: LayerTrace = (layer, queries, revived) => {
    for (const i of queries) counts[layer].set(i, (counts[layer].get(i) ?? 0) + 1);
    for (const i of revived) revivals.push({ layer, token: i });
  };
  const maxCount = () => Math.max(...counts.flatMap((m) => [...m.values()]));
  return { counts, revivals, trace, maxCount };
}

/** Prefill, `decode` sampled steps, then a batch of new tokens: the life of a chat turn. */
async function drive(
  model: LoadedModel,
  schedule: Schedule | null,
  prompt: number[],
  decode: number,
  batch: number[],
  trace?: LayerTrace,
) {
  const seq = new SequenceState(model.config);
  const sampler = new Sampler({ temperature: 0.8, topP: 0.95, topK: 0, seed: 11 });
  const steps = [await runStep(model, seq, prompt, { schedule, trace })];
  for (let s = 0; s < decode; s++)
    steps.push(await runStep(model, seq, [sampler.sample(steps.at(-1)!.logits)], { schedule, trace }));
  steps.push(await runStep(model, seq, batch, { schedule, trace }));
  return { seq, steps };
}

describe('LazyLLM in the engine (stories260K)', () => {
  let model: LoadedModel;
  const { tok } = loadStories260K();
  const stream = storyStream(tok, devStories());
  const [w] = promptWindows(stream, 300, 40, 1);
  const prompt = w.prompt;
  const batch = w.next.slice(0, 25);
  const L = 5;
  beforeAll(async () => {
    model = await loadDefaultModel();
  });

  it('a keep-everything schedule gives logits identical to dense at prefill and every decode step', async () => {
    const keepAll = parseSchedule('1:1,2:1,3:1,4:1');
    const dense = await drive(model, null, prompt, 20, batch);
    const lazy = await drive(model, keepAll, prompt, 20, batch);
    expect(lazy.steps).toHaveLength(22);
    lazy.steps.forEach((s, k) => expect(maxAbsDiff(s.logits, dense.steps[k].logits)).toBeLessThanOrEqual(1e-5));
  });

  it('computes every token at most once per layer across prefill, 20 decode steps and a later batch', async () => {
    const c = computeCounter(L);
    const { seq, steps } = await drive(model, parseSchedule('bos,1:0.4,3:0.5'), prompt, 20, batch, c.trace);
    expect(c.maxCount()).toBe(1);
    // Decode steps re-select: some tokens pruned earlier come back (from the Aux Cache, at depth > 0).
    expect(c.revivals.length).toBeGreaterThan(0);
    for (const r of c.revivals) expect(r.layer).toBeGreaterThan(0);
    const n = seq.length;
    expect(n).toBe(prompt.length + 20 + batch.length);
    // Layer 0 sees every token exactly once; deeper layers far fewer than dense would over the same steps.
    expect(c.counts[0].size).toBe(n);
    for (let l = 1; l < L; l++) expect(c.counts[l].size).toBeLessThan(n);
    // The bookkeeping agrees with the trace: a token's depth is the number of layers it was computed at.
    for (let i = 0; i < n; i++) {
      const computedAt = c.counts.filter((m) => m.has(i)).length;
      expect(seq.depth[i]).toBe(computedAt);
    }
    const totalRows = steps.reduce((s, st) => s + st.stats.computedPerLayer.reduce((a, b) => a + b, 0), 0);
    expect(totalRows).toBe(c.counts.reduce((s, m) => s + m.size, 0));
  });

  it('runs per-layer query counts that follow the schedule at prefill', async () => {
    const seq = new SequenceState(model.config);
    const { stats } = await runStep(model, seq, prompt, { schedule: parseSchedule('1:0.4,3:0.5') });
    const n = prompt.length;
    const a1 = Math.ceil(0.4 * n);
    const a3 = Math.ceil(0.5 * a1);
    expect(stats.activePerLayer).toEqual([n, a1, a1, a3, a3]);
    expect(stats.computedPerLayer).toEqual([n, a1, a1, a3, a3]);
    expect(stats.flops).toBeLessThan(stats.denseFlops);
    // Every pruned token parked its hidden state: exactly the tokens that stopped short of the last layer.
    expect(stats.auxEntries).toBe(n - a3);
    expect(seq.depthHistogram()).toEqual([0, n - a1, 0, a1 - a3, 0, a3]);
  });

  it('revives a pruned token from its Aux Cache state, not from layer 0, and drops the entry once it is complete', async () => {
    const schedule = parseSchedule('bos,1:0.3,3:0.5');
    const c = computeCounter(L);
    const seq = new SequenceState(model.config);
    const first = await runStep(model, seq, prompt, { schedule, trace: c.trace });
    const parked = new Map([...seq.aux.entries].map(([i, h]) => [i, { depth: seq.depth[i], hidden: h.slice() }]));
    expect(parked.size).toBeGreaterThan(0);
    // Decode with dense steps: every active token must be carried to the end, so each parked
    // token is revived exactly at its depth with the hidden state it parked.
    const revivedInputs = new Map<number, number>();
    const layerTrace: LayerTrace = (layer, queries, revived) => {
      c.trace(layer, queries, revived);
      for (const i of revived) revivedInputs.set(i, layer);
    };
    let logits = first.logits;
    for (let s = 0; s < 3; s++)
      logits = (
        await runStep(model, seq, [new Sampler({ temperature: 0, topP: 1, topK: 0, seed: 0 }).sample(logits)], {
          schedule: null,
          trace: layerTrace,
        })
      ).logits;
    expect(c.maxCount()).toBe(1);
    for (const [i, { depth }] of parked) {
      expect(revivedInputs.get(i)).toBe(depth); // resumed at the layer where it stopped
      expect(c.counts[0].get(i)).toBe(1); //        layer 0 ran once, at prefill, not again
      expect(seq.depth[i]).toBe(L);
      expect(seq.aux.entries.has(i)).toBe(false);
    }
    expect(seq.aux.size).toBe(0);
  });

  it('a revival budget caps the tokens revived per pruning layer and step; revive:0 revives none', async () => {
    for (const budget of [0, 3]) {
      const c = computeCounter(L);
      const schedule = parseSchedule(`bos,revive:${budget},1:0.4,3:0.5`);
      const { steps } = await drive(model, schedule, prompt, 20, batch, c.trace);
      expect(c.maxCount()).toBe(1);
      for (const s of steps.slice(1)) for (const r of s.stats.revivedPerLayer) expect(r).toBeLessThanOrEqual(budget);
    }
    // Without a budget the same run revives more than 3 at some layer of some step: the cap did something.
    const free = await drive(model, parseSchedule('bos,1:0.4,3:0.5'), prompt, 20, batch);
    expect(Math.max(...free.steps.slice(1).flatMap((s) => s.stats.revivedPerLayer))).toBeGreaterThan(3);
  });

  it('a revived token computes the same K/V as if it had never been pruned', async () => {
    // Dense after a lazy prefill must equal a dense prefill for the layers the pruned tokens resume:
    // the Aux Cache holds exactly the hidden state the dense pass would have had there.
    const lazySeq = new SequenceState(model.config);
    await runStep(model, lazySeq, prompt, { schedule: parseSchedule('1:0.3') });
    const denseSeq = new SequenceState(model.config);
    await runStep(model, denseSeq, prompt, { schedule: null });
    // Reviving everything (a dense step) must reproduce the dense K/V of every token at layer 1.
    const next = prompt.length;
    await runStep(model, lazySeq, [batch[0]], { schedule: null });
    await runStep(model, denseSeq, [batch[0]], { schedule: null });
    const every = Int32Array.from({ length: next + 1 }, (_, i) => i);
    // Layer-1 K rows of pruned-then-revived tokens depend only on their own hidden state entering layer 1.
    expect(
      maxAbsDiff(
        lazySeq.kv.gather(1, every).k.data as Float32Array,
        denseSeq.kv.gather(1, every).k.data as Float32Array,
      ),
    ).toBeLessThanOrEqual(1e-5);
  });
});

describe('LazyLLM on a seeded random GQA model', () => {
  const { model } = randomModel();
  it('keeps every invariant on another shape', async () => {
    const m = await model;
    const c = computeCounter(m.config.nLayers);
    const prompt = Array.from({ length: 120 }, (_, i) => (i * 53 + 3) % 512);
    prompt[0] = 1;
    const { seq } = await drive(m, parseSchedule('1:0.5,2:0.5'), prompt, 10, [5, 6, 7, 8], c.trace);
    expect(c.maxCount()).toBe(1);
    for (let i = 0; i < seq.length; i++) {
      expect(seq.aux.entries.has(i)).toBe(seq.depth[i] < m.config.nLayers);
    }
  });
});

describe("LazyLLM on SmolLM2's shape (30 layers, GQA 9/3), seeded random weights", () => {
  // SmolLM2-135M's layer count and head layout at a small width (head size 8): the invariants depend
  // on the shape of the schedule and the attention, not on the width or the weights.
  const { model } = randomModel({
    dim: 72,
    hiddenDim: 192,
    nLayers: 30,
    nHeads: 9,
    nKvHeads: 3,
    vocabSize: 512,
    seqLen: 1024,
    seed: 135,
  });
  it('computes each token at most once per layer, follows the default 30-layer schedule, and keeps Aux entries exactly for unfinished tokens', async () => {
    const m = await model;
    const L = m.config.nLayers;
    const c = computeCounter(L);
    const prompt = Array.from({ length: 400 }, (_, i) => (i * 97 + 11) % 512);
    const schedule = defaultSchedule(L);
    const { seq, steps } = await drive(m, schedule, prompt, 12, [5, 6, 7, 8, 9], c.trace);
    expect(c.maxCount()).toBe(1);
    // Prefill: every pruning layer of the schedule shrinks the set to its share, never below the floor.
    let active = prompt.length;
    steps[0].stats.computedPerLayer.forEach((q, l) => {
      const keep = keepAt(schedule, l);
      if (keep !== null) active = Math.min(active, Math.max(1, schedule.minActive ?? 1, Math.ceil(keep * active)));
      expect(q, `layer ${l}`).toBe(active);
    });
    expect(c.revivals.length).toBeGreaterThan(0);
    for (let i = 0; i < seq.length; i++) {
      expect(seq.aux.entries.has(i)).toBe(seq.depth[i] < L);
      for (let l = 0; l < L; l++) expect(c.counts[l].has(i)).toBe(l < seq.depth[i]);
    }
  });
});

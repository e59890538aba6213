/**
 * The trace behind `lazy: {"trace": true}` (src/engine/trace.ts): it must describe exactly what the
 * engine computed (checked against the step statistics the engine counts itself), in a session
 * as well as stateless, and stay within its documented size bound, worst case included.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { SequenceState } from '../../src/engine/caches.js';
import { generate } from '../../src/engine/generate.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { parseSchedule, type Schedule } from '../../src/engine/policy.js';
import { MAX_TRACE_REVIVALS, TraceRecorder, traceSizeBound, type LazyTrace } from '../../src/engine/trace.js';
import { runTurn } from '../../src/engine/turns.js';
import { loadDefaultModel } from '../support/models.js';

let model: LoadedModel;
beforeAll(async () => {
  model = await loadDefaultModel();
});

const SCHEDULE = parseSchedule('bos,1:0.5,3:0.5');
const opts = (seed: number, schedule: Schedule | null = SCHEDULE) => ({
  maxTokens: 40,
  sampler: { temperature: 0.8, topP: 0.9, topK: 0, seed },
  schedule,
});

/** Prefill rows per layer as the trace tells them. */
function prefillRows(t: LazyTrace): number[] {
  return Array.from(
    { length: t.layers },
    (_, l) => t.prefill_depth.filter((d, i) => (i < t.reused ? t.depth_before[i] : 0) <= l && l < d).length,
  );
}

/** Rows per layer the revivals add. */
function revivalRows(t: LazyTrace): number[] {
  const rows = new Array(t.layers).fill(0);
  for (const [, , from, to] of t.revivals) for (let l = from; l < to; l++) rows[l]++;
  return rows;
}

const jsonBytes = (v: unknown) => new TextEncoder().encode(JSON.stringify(v)).length;

function expectWithinBound(t: LazyTrace) {
  const bound = traceSizeBound(t.tokens, t.layers, model.config.seqLen, jsonBytes(t.pieces));
  expect(jsonBytes(t)).toBeLessThanOrEqual(bound);
}

describe('TraceRecorder', () => {
  it('records a stateless generation exactly as the engine counted it', async () => {
    const prompt = model.tokenizer.encode(
      'Once upon a time, there was a little girl named Lily. She loved to play outside in the park.',
      { bos: true },
    );
    const seq = new SequenceState(model.config);
    const tracer = new TraceRecorder(model, seq);
    const r = await generate(model, seq, prompt, { ...opts(3), trace: tracer.hook });
    const t = tracer.result();

    expect(Object.keys(t).sort()).toEqual([
      'depth_before',
      'layers',
      'pieces',
      'prefill_depth',
      'question',
      'reused',
      'revivals',
      'revivals_dropped',
      'tokens',
    ]);
    expect(t.question).toBeNull(); // a plain prompt: no chat question
    expect(t.layers).toBe(model.config.nLayers);
    expect(t.tokens).toBe(prompt.length);
    expect(t.reused).toBe(0);
    expect(t.depth_before).toEqual([]);
    expect(t.pieces.join('')).toBe(model.tokenizer.decode(prompt));
    expect(t.prefill_depth).toHaveLength(prompt.length);
    expect(t.prefill_depth.at(-1)).toBe(t.layers); // the last token always reaches the head
    expect(prefillRows(t)).toEqual(r.stats.prefill_computed_per_layer);
    expect(prefillRows(t).some((q) => q < prompt.length)).toBe(true); // this schedule prunes this prompt

    // Every decode step computes its new token at every layer; the rest of each layer's rows are revivals.
    const decodeSteps = r.stats.computed_per_layer[0] - prompt.length;
    const rev = revivalRows(t);
    expect(r.stats.computed_per_layer).toEqual(
      r.stats.prefill_computed_per_layer.map((p, l) => p + decodeSteps + rev[l]),
    );
    expect(t.revivals.length).toBe(r.stats.revived);
    expect(t.revivals.length).toBeGreaterThan(0);
    expect(t.revivals_dropped).toBe(0);
    for (const [step, pos, from, to] of t.revivals) {
      expect(step).toBeGreaterThanOrEqual(1);
      expect(step).toBeLessThanOrEqual(decodeSteps);
      expect(pos).toBeLessThan(prompt.length); // decoded tokens always reach the last layer in their own step
      expect(from).toBeGreaterThanOrEqual(t.prefill_depth[pos]); // a revival resumes where the token stopped
      expect(to).toBeGreaterThan(from);
      expect(to).toBeLessThanOrEqual(t.layers);
    }
    expectWithinBound(t);
  });

  it('records dense runs as every token at every layer', async () => {
    const prompt = model.tokenizer.encode('The sun was hot.', { bos: true });
    const seq = new SequenceState(model.config);
    const tracer = new TraceRecorder(model, seq);
    await generate(model, seq, prompt, { ...opts(1, null), trace: tracer.hook });
    const t = tracer.result();
    expect(t.prefill_depth).toEqual(new Array(prompt.length).fill(model.config.nLayers));
    expect(t.revivals).toEqual([]);
  });

  it('records a session turn over the whole conversation, earlier turns included', async () => {
    const seq = new SequenceState(model.config);
    const first = model.tokenizer.encode('Tom had a red ball.\n', { bos: true });
    const t1 = await runTurn(model, seq, first, opts(5));
    const history = [...first, ...t1.record.decoded];
    const depthsBefore = Array.from(seq.depth.subarray(0, seq.length));
    const target = [...history, ...model.tokenizer.encode('He threw it to his dog.\n')];
    const tracer = new TraceRecorder(model, seq);
    const t2 = await runTurn(model, seq, target, { ...opts(6), trace: tracer.hook });
    const t = tracer.result();

    expect(t.reused).toBe(t2.stats.reused_tokens);
    expect(t.reused).toBeGreaterThan(0);
    expect(t.tokens).toBe(target.length);
    expect(t.depth_before).toEqual(depthsBefore.slice(0, t.reused));
    expect(t.pieces.join('')).toBe(model.tokenizer.decode(target));
    // The prefill of this turn computed the new tokens, and whatever history it revived.
    expect(prefillRows(t)).toEqual(t2.result.stats.prefill_computed_per_layer);
    expectWithinBound(t);
  });

  it('stays within its size bound in the worst case: every position revived at every layer, one step each', () => {
    const layers = 30;
    const tokens = 2048;
    const fakeSeq = {
      length: tokens,
      depth: new Uint8Array(tokens),
      tokens: new Array(tokens).fill(1),
    } as unknown as SequenceState;
    const fakeModel = {
      config: { nLayers: layers },
      tokenizer: { createDecoder: () => ({ push: () => 'ab', flush: () => '' }) },
    } as unknown as LoadedModel;
    const tracer = new TraceRecorder(fakeModel, fakeSeq);
    const all = Int32Array.from({ length: tokens }, (_, i) => i);
    const none = new Int32Array(0);
    // Prefill: layer 0 only (everything pruned at layer 1).
    tracer.hook(0, all, none);
    for (let l = 1; l < layers; l++) tracer.hook(l, none, none);
    // Decode steps 1..layers-1: step s revives every position at layer s and carries it one layer.
    for (let s = 1; s < layers; s++) {
      for (let l = 0; l < layers; l++) tracer.hook(l, l === s ? all : none, l === s ? all : none);
    }
    const t = tracer.result();
    expect(t.revivals).toHaveLength(MAX_TRACE_REVIVALS);
    expect(t.revivals_dropped).toBe((layers - 1) * tokens - MAX_TRACE_REVIVALS);
    const bound = traceSizeBound(tokens, layers, 8192, jsonBytes(t.pieces));
    expect(jsonBytes(t)).toBeLessThanOrEqual(bound);
    // Without pieces, the documented figure for a 2048-token, 30-layer prompt: under 64 KiB.
    expect(bound - jsonBytes(t.pieces)).toBeLessThan(64 * 1024);
  });
});

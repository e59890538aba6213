/**
 * frequency_penalty and presence_penalty (OpenAI's definitions) and repetition_penalty (llama.cpp's)
 * in src/engine/sampler.ts, against a reference written here from the published formulas alone:
 *   OpenAI:    mu[j] -> mu[j] - c[j] * alpha_frequency - (c[j] > 0) * alpha_presence,
 *              c[j] = how often token j was generated before the current position;
 *   llama.cpp: for each distinct token among the last penalty_last_n (64) tokens, prompt included,
 *              logit <= 0 ? logit * penalty : logit / penalty (applied before frequency/presence).
 */
import { describe, expect, it } from 'vitest';
import { penalizeLogits, REPETITION_WINDOW, Sampler, type SamplerOptions } from '../../src/engine/sampler.js';

/** A small deterministic generator, so that the cases are fixed and unrelated to the sampler's RNG. */
function lcg(seed: number) {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

interface Penalties {
  frequency: number;
  presence: number;
  repetition: number;
}

/** The formulas, in float64, one token at a time. */
function reference(logits: ArrayLike<number>, p: Penalties, generated: number[], window: number[]): number[] {
  const recent = window.slice(Math.max(0, window.length - 64));
  return Array.from(logits, (x, j) => {
    let v = x;
    if (recent.includes(j)) v = v <= 0 ? v * p.repetition : v / p.repetition;
    const c = generated.filter((t) => t === j).length;
    return v - c * p.frequency - (c > 0 ? 1 : 0) * p.presence;
  });
}

describe('penalizeLogits', () => {
  const V = 40;
  const rand = lcg(26);
  const cases = Array.from({ length: 30 }, (_, k) => ({
    logits: Float32Array.from({ length: V }, () => (rand() - 0.5) * 20),
    p: { frequency: (rand() - 0.5) * 4, presence: (rand() - 0.5) * 4, repetition: k % 3 === 0 ? 1 : 0.2 + rand() * 3 },
    generated: Array.from({ length: Math.floor(rand() * 30) }, () => Math.floor(rand() * 12)),
    // longer than the window in some cases: tokens 30..39 appear only before the last 64
    context: contextOf(Math.floor(rand() * 90)),
  }));
  function contextOf(n: number): number[] {
    return Array.from({ length: n }, (_, i) => (i < n - 64 ? 30 + (i % 10) : Math.floor(rand() * 25)));
  }

  it.each(cases.map((c, i) => [i, c] as const))('case %i equals the reference formulas', (_i, c) => {
    const before = Float32Array.from(c.logits);
    const window = [...c.context, ...c.generated];
    const got = penalizeLogits(c.logits, c.p, c.generated, window);
    const want = reference(c.logits, c.p, c.generated, window);
    expect(got).toHaveLength(V);
    for (let j = 0; j < V; j++) expect(got[j]).toBeCloseTo(want[j], 4);
    expect(c.logits).toEqual(before); // the model's logits stay as they were (logprobs use them)
  });

  it('divides a positive logit and multiplies a negative one, once however often the token occurs', () => {
    const got = penalizeLogits(
      Float32Array.from([2, -2, 3]),
      { frequency: 0, presence: 0, repetition: 2 },
      [],
      [0, 0, 0, 1, 1],
    );
    expect(Array.from(got)).toEqual([1, -4, 3]);
  });

  it('counts frequency per occurrence and presence once, over the generated tokens only', () => {
    const got = penalizeLogits(
      Float32Array.from([1, 1, 1]),
      { frequency: 0.5, presence: 0.25, repetition: 1 },
      [0, 0, 0, 1],
      [2, 2],
    );
    expect(Array.from(got)).toEqual([1 - 1.5 - 0.25, 1 - 0.5 - 0.25, 1]);
  });

  it('looks back only REPETITION_WINDOW tokens for the repetition penalty', () => {
    const window = [5, ...new Array(REPETITION_WINDOW).fill(1)];
    const got = penalizeLogits(
      Float32Array.from([0, 4, 0, 0, 0, 4]),
      { frequency: 0, presence: 0, repetition: 2 },
      [],
      window,
    );
    expect(got[5]).toBe(4); // 65 tokens back: outside
    expect(got[1]).toBe(2);
  });
});

describe('Sampler with penalties', () => {
  const V = 16;
  const rand = lcg(7);
  /** the same logits every step: only the penalties can move the choice */
  const logits = Float32Array.from({ length: V }, () => rand() * 4);

  /** Greedy decoding by the reference, the window sliding over prompt then generated tokens. */
  function greedyReference(p: Penalties, context: number[], steps: number): number[] {
    const out: number[] = [];
    for (let s = 0; s < steps; s++) {
      const l = reference(logits, p, out, [...context, ...out]);
      out.push(l.indexOf(Math.max(...l)));
    }
    return out;
  }

  const run = (o: SamplerOptions, steps: number) => {
    const s = new Sampler(o);
    return Array.from({ length: steps }, () => s.sample(logits));
  };

  it.each<[string, Penalties, boolean]>([
    ['frequency', { frequency: 0.7, presence: 0, repetition: 1 }, true],
    ['presence', { frequency: 0, presence: 1.5, repetition: 1 }, true],
    ['repetition', { frequency: 0, presence: 0, repetition: 1.8 }, true],
    ['all three', { frequency: 0.3, presence: 0.4, repetition: 1.3 }, true],
    ['negative frequency (encourages repeats)', { frequency: -0.5, presence: 0, repetition: 1 }, false],
  ])('greedy with %s penalty follows the reference step by step', (_name, p, moves) => {
    const context = [3, 3, 9, 1];
    const got = run(
      {
        temperature: 0,
        topP: 1,
        topK: 0,
        seed: 0,
        frequencyPenalty: p.frequency,
        presencePenalty: p.presence,
        repetitionPenalty: p.repetition,
        penaltyContext: context,
      },
      40,
    );
    expect(got).toEqual(greedyReference(p, context, 40));
    // a positive penalty moves the choice off the plain argmax; a negative one keeps it there
    expect(new Set(got).size > 1).toBe(moves);
  });

  it('with temperature, draws from the penalized distribution with the same random numbers', () => {
    const p = { frequency: 0.4, presence: 0.6, repetition: 1.5 };
    const context = [0, 2, 4];
    const opts = { temperature: 0.9, topP: 0.95, topK: 0, seed: 1234 };
    const penalized = new Sampler({
      ...opts,
      frequencyPenalty: p.frequency,
      presencePenalty: p.presence,
      repetitionPenalty: p.repetition,
      penaltyContext: context,
    });
    // the plain sampler, fed the reference's penalized logits, consumes the same RNG stream
    const plain = new Sampler(opts);
    const out: number[] = [];
    for (let s = 0; s < 50; s++) {
      const want = plain.sample(Float32Array.from(reference(logits, p, out, [...context, ...out])));
      expect(penalized.sample(logits)).toBe(want);
      out.push(want);
    }
  });

  it('off values give exactly the plain sampler (llama2.c parity is kept)', () => {
    const opts = { temperature: 1, topP: 0.9, topK: 0, seed: 42 };
    expect(
      run({ ...opts, frequencyPenalty: 0, presencePenalty: 0, repetitionPenalty: 1, penaltyContext: [1, 2] }, 30),
    ).toEqual(run(opts, 30));
  });

  it.each<[Partial<SamplerOptions>, RegExp]>([
    [{ frequencyPenalty: 2.5 }, /frequency_penalty 2.5 must be in \[-2, 2\]/],
    [{ presencePenalty: -3 }, /presence_penalty -3 must be in \[-2, 2\]/],
    [{ repetitionPenalty: 0 }, /repetition_penalty 0 must be a finite number > 0/],
    [{ repetitionPenalty: Number.NaN }, /repetition_penalty NaN/],
  ])('refuses %o', (o, message) => {
    expect(() => new Sampler({ temperature: 0, topP: 1, topK: 0, seed: 0, ...o })).toThrow(message);
  });
});

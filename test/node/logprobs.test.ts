import { describe, expect, it } from 'vitest';
import { logSumExp, tokenLogprobs } from '../../src/engine/logprobs.js';

/** log_softmax in plain float64, the reference. */
function reference(logits: number[]): number[] {
  const m = Math.max(...logits);
  const z = m + Math.log(logits.reduce((s, v) => s + Math.exp(v - m), 0));
  return logits.map((v) => v - z);
}

describe('tokenLogprobs (the log-softmax of one step)', () => {
  it('gives the log-softmax of the chosen token and the top alternatives, sorted, ties by id', () => {
    const logits = [1, 3, -2, 3, 0.5, 7, -1e4];
    const ref = reference(logits);
    const r = tokenLogprobs(Float32Array.from(logits), 2, 4);
    expect(r.id).toBe(2);
    expect(r.logprob).toBeCloseTo(ref[2], 6);
    expect(r.top.map((t) => t.id)).toEqual([5, 1, 3, 0]);
    r.top.forEach((t) => expect(t.logprob).toBeCloseTo(ref[t.id], 6));
    expect(Math.exp(ref[5]) + Math.exp(ref[1]) + Math.exp(ref[3]) + Math.exp(ref[0])).toBeLessThan(1);
  });

  it('matches a full sort on random logits, and the probabilities sum to 1', () => {
    let s = 12345;
    const rnd = () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 20 - 10;
    const logits = Float32Array.from({ length: 1000 }, rnd);
    const r = tokenLogprobs(logits, 17, 20);
    const order = [...logits.keys()].sort((a, b) => logits[b] - logits[a] || a - b).slice(0, 20);
    expect(r.top.map((t) => t.id)).toEqual(order);
    const z = logSumExp(logits);
    expect([...logits].reduce((acc, v) => acc + Math.exp(v - z), 0)).toBeCloseTo(1, 9);
  });

  it('top 0 gives no alternatives; a top beyond the vocabulary gives all of it', () => {
    expect(tokenLogprobs(Float32Array.of(0, 1), 1, 0).top).toEqual([]);
    const all = tokenLogprobs(Float32Array.of(0, 0), 0, 5);
    expect(all.top.map((t) => t.id)).toEqual([0, 1]);
    expect(all.top[0].logprob).toBeCloseTo(Math.log(0.5), 12);
  });

  it('is stable for large logits and refuses bad arguments', () => {
    const r = tokenLogprobs(Float32Array.of(1e30, 1e30 - 1e24, 0), 0, 1);
    expect(Number.isFinite(r.logprob)).toBe(true);
    expect(r.logprob).toBeLessThanOrEqual(0);
    expect(() => tokenLogprobs(Float32Array.of(0), 1, 0)).toThrow(RangeError);
    expect(() => tokenLogprobs(Float32Array.of(0), 0, 21)).toThrow(RangeError);
  });
});

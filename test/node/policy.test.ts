import { describe, expect, it } from 'vitest';
import { EngineError } from '../../src/engine/errors.js';
import {
  defaultSchedule,
  formatSchedule,
  keepAt,
  limitRevivals,
  parseSchedule,
  selectActive,
  validateSchedule,
} from '../../src/engine/policy.js';

const ids = (...a: number[]) => Int32Array.from(a);
const sc = (...a: number[]) => Float32Array.from(a);

describe('selectActive (the pure LazyLLM policy)', () => {
  it('keeps the top ceil(share * n) tokens by score, ascending, always including the last', () => {
    const out = selectActive(ids(0, 1, 2, 3, 4, 5), sc(0.05, 0.4, 0.01, 0.3, 0.2, 0.0), 0.5, false);
    expect([...out]).toEqual([1, 3, 5]); // last (5) forced despite score 0, then the two best: 1, 3
  });

  it('keeps token 0 when asked, even with a low score', () => {
    expect([...selectActive(ids(0, 1, 2, 3), sc(0.0, 0.5, 0.4, 0.1), 0.5, true)]).toEqual([0, 3]);
    expect([...selectActive(ids(0, 1, 2, 3), sc(0.0, 0.5, 0.4, 0.1), 0.75, true)]).toEqual([0, 1, 3]);
  });

  it('selects within the incoming set only (indices need not be contiguous)', () => {
    const out = selectActive(ids(2, 7, 9, 15), sc(0.9, 0.1, 0.5, 0.2), 0.5, true);
    expect([...out]).toEqual([2, 15]); // token 0 is not in the set, so "keep first" adds nothing
  });

  it('returns the incoming set itself when the share keeps everything', () => {
    const incoming = ids(0, 1, 2);
    expect(selectActive(incoming, sc(1, 2, 3), 1, false)).toBe(incoming);
  });

  it('never prunes below the floor, and leaves sets at or under it whole', () => {
    const incoming = ids(0, 1, 2, 3, 4, 5, 6, 7);
    const scores = sc(0.3, 0.1, 0.2, 0.05, 0.15, 0.1, 0.05, 0.05);
    expect([...selectActive(incoming, scores, 0.25, false, 4)]).toEqual([0, 2, 4, 7]);
    expect(selectActive(incoming, scores, 0.25, false, 8)).toBe(incoming);
  });

  it('breaks ties toward the more recent token', () => {
    expect([...selectActive(ids(0, 1, 2, 3, 4), sc(0.2, 0.2, 0.2, 0.2, 0.2), 0.4, false)]).toEqual([3, 4]);
  });

  it('rejects misaligned scores', () => {
    expect(() => selectActive(ids(0, 1), sc(1), 0.5, false)).toThrow(EngineError);
  });
});

describe('schedules', () => {
  it('parses and formats specs', () => {
    const s = parseSchedule('bos, 1:0.5,3:0.25');
    expect(s).toEqual({
      prune: [
        { layer: 1, keep: 0.5 },
        { layer: 3, keep: 0.25 },
      ],
      keepFirst: true,
    });
    expect(formatSchedule(s)).toBe('bos,1:0.5,3:0.25');
    expect(parseSchedule('all')).toEqual({ prune: [], keepFirst: false });
    expect(parseSchedule('bos,min:64,2:0.5')).toEqual({
      prune: [{ layer: 2, keep: 0.5 }],
      keepFirst: true,
      minActive: 64,
    });
    expect(formatSchedule(parseSchedule('bos,min:64,2:0.5'))).toBe('bos,min:64,2:0.5');
    expect(keepAt(s, 3)).toBe(0.25);
    expect(keepAt(s, 2)).toBeNull();
  });

  it.each([
    ['0:0.5', /pruning starts at layer 1/],
    ['5:0.5', /layer 5 does not exist \(the model has layers 0\.\.4\)/],
    ['3:0.5,2:0.5', /strictly increasing/],
    ['2:1.5', /keep share 1.5 at layer 2 must be in \(0, 1\]/],
    ['2:0', /must be in \(0, 1\]/],
    ['min:0,2:0.5', /min 0 must be an integer >= 1/],
  ])('rejects %s saying why', (spec, why) => {
    expect(() => validateSchedule(parseSchedule(spec), 5)).toThrow(why);
  });

  it.each(['', '2-0.5', 'x:1', '2:', 'bos,,'])('rejects the malformed spec "%s"', (spec) => {
    expect(() => parseSchedule(spec)).toThrow(EngineError);
  });

  it('has a valid default for any depth', () => {
    for (let L = 1; L <= 48; L++) expect(() => validateSchedule(defaultSchedule(L), L)).not.toThrow();
  });
});

describe('revival budget', () => {
  it('parses, formats and validates revive:N', () => {
    const s = parseSchedule('bos,min:128,revive:4,10:0.5');
    expect(s.reviveBudget).toBe(4);
    expect(formatSchedule(s)).toBe('bos,min:128,revive:4,10:0.5');
    expect(parseSchedule('revive:0,2:0.5').reviveBudget).toBe(0);
    expect(parseSchedule('2:0.5').reviveBudget).toBeUndefined();
    expect(() => validateSchedule({ prune: [], keepFirst: false, reviveBudget: -1 }, 4)).toThrow(
      /revive -1 must be an integer >= 0/,
    );
  });

  it('keeps the best-scored revivals up to the budget and every token that is not a revival', () => {
    const sel = Int32Array.from([0, 2, 3, 5, 7, 9]);
    const revivable = (i: number) => [2, 3, 5, 7].includes(i);
    const score = (i: number) => ({ 2: 0.1, 3: 0.4, 5: 0.3, 7: 0.2 })[i] ?? 0;
    expect([...limitRevivals(sel, revivable, score, 2)]).toEqual([0, 3, 5, 9]);
    expect([...limitRevivals(sel, revivable, score, 0)]).toEqual([0, 9]);
    expect(limitRevivals(sel, revivable, score, 4)).toBe(sel);
    // ties go to the more recent token
    expect([...limitRevivals(sel, revivable, () => 1, 1)]).toEqual([0, 7, 9]);
  });
});

import { beforeAll, describe, expect, it } from 'vitest';
import { promptWindows, storyStream } from '../../scripts/lib/prompts.js';
import { SequenceState } from '../../src/engine/caches.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { formatSchedule, parseSchedule, validateSchedule } from '../../src/engine/policy.js';
import { ATTN_SCORE_BYTES, prefillChunks, runStep } from '../../src/engine/step.js';
import { LAYER_IO } from '../../src/model/shard-io.js';
import type { HostTensor } from '../../src/runtime/onnx-runtime.js';
import { devStories, loadStories260K } from '../support/paths.js';
import { loadDefaultModel, maxAbsDiff } from '../support/models.js';

describe('ranking by a window of query rows (schedule item rows:N)', () => {
  let model: LoadedModel;
  const { tok } = loadStories260K();
  const [w] = promptWindows(storyStream(tok, devStories()), 40, 0, 1);
  beforeAll(async () => {
    model = await loadDefaultModel();
  });

  /** Layer 0 run on the first n prompt tokens with no context, attn_last averaged over `rows` rows. */
  async function attnLast(n: number, rows: number): Promise<Float32Array> {
    const { dim, kvDim } = model.config;
    const x = model.embed.lookup(w.prompt.slice(0, n));
    const none = (data: HostTensor['data'], width: number): HostTensor => ({ data, dims: width ? [0, width] : [0] });
    const io = LAYER_IO.inputs;
    const out = await model.layers[0].run({
      [io.x]: { data: x, dims: [n, dim] },
      [io.pos]: { data: Float32Array.from({ length: n }, (_, i) => i), dims: [n] },
      [io.pastK]: none(new Float32Array(0), kvDim),
      [io.pastV]: none(new Float32Array(0), kvDim),
      [io.pastKF16]: none(new Uint16Array(0), kvDim),
      [io.pastVF16]: none(new Uint16Array(0), kvDim),
      [io.pastKI8]: none(new Int8Array(0), kvDim),
      [io.pastVI8]: none(new Int8Array(0), kvDim),
      [io.pastKI8Scale]: none(new Float32Array(0), 1),
      [io.pastVI8Scale]: none(new Float32Array(0), 1),
      [io.pastPos]: none(new Float32Array(0), 0),
      [io.attnRows]: { data: BigInt64Array.of(BigInt(rows)), dims: [1] },
    });
    return out[LAYER_IO.outputs.attnLast].data as Float32Array;
  }

  it('averages the last rows exactly as the single last rows of shorter prefixes do', async () => {
    // Token j's row over keys 0..j is what a run on the first j+1 tokens gives with rows 1 (causal:
    // later tokens change nothing for it); keys after j get nothing from it.
    const n = 30;
    const k = 5;
    const want = new Float32Array(n);
    for (let j = n - k; j < n; j++) (await attnLast(j + 1, 1)).forEach((p, key) => (want[key] += p / k));
    const got = await attnLast(n, k);
    expect(got.length).toBe(n);
    expect(maxAbsDiff(got, want)).toBeLessThan(1e-6);
    expect(maxAbsDiff(got, await attnLast(n, 1))).toBeGreaterThan(1e-3); // a different ranking signal
    // A window wider than the run covers every row, as Slice clamps it.
    const all = new Float32Array(8);
    for (let j = 0; j < 8; j++) (await attnLast(j + 1, 1)).forEach((p, key) => (all[key] += p / 8));
    expect(maxAbsDiff(await attnLast(8, 64), all)).toBeLessThan(1e-6);
  });

  it('rows:1 is the paper\'s ranking: the same step as no rows item', async () => {
    const a = await runStep(model, new SequenceState(model.config), w.prompt, { schedule: parseSchedule('bos,1:0.4,3:0.5') });
    const b = await runStep(model, new SequenceState(model.config), w.prompt, { schedule: parseSchedule('bos,rows:1,1:0.4,3:0.5') });
    expect(b.logits).toEqual(a.logits);
    expect(b.stats.computedPerLayer).toEqual(a.stats.computedPerLayer);
  });

  it('parses, formats and validates rows:N', () => {
    const s = parseSchedule('bos,rows:16,20:0.5');
    expect(s.scoreRows).toBe(16);
    expect(formatSchedule(s)).toBe('bos,rows:16,20:0.5');
    expect(() => validateSchedule(parseSchedule('rows:0,2:0.5'), 4)).toThrow(/rows 0 must be an integer from 1 to 64/);
    expect(() => validateSchedule(parseSchedule('rows:65,2:0.5'), 4)).toThrow(/rows 65/);
  });
});

describe('prefill chunks', () => {
  it('bound the attention scores at long contexts and keep every chunk as long as the ranking window', () => {
    expect(prefillChunks(2048, 2048, 9, 1)).toBe(19); // 113 rows at most: near the 128 of short contexts
    expect(prefillChunks(100, 100, 9, 1)).toBe(1);
    for (const keys of [1024, 4096, 8192, 32768]) {
      const q = keys;
      const n = prefillChunks(q, keys, 9, 1);
      const rows = Math.ceil(q / n);
      expect(Math.max(16, 9 * rows * keys * 4)).toBeLessThanOrEqual(Math.max(ATTN_SCORE_BYTES, 9 * 16 * keys * 4));
      for (const window of [16, 32, 64]) {
        const m = prefillChunks(q, keys, 9, window);
        expect(Math.floor(q / m)).toBeGreaterThanOrEqual(window);
      }
    }
  });
});

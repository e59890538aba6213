import { beforeAll, describe, expect, it } from 'vitest';
import { klDivergence } from '../../scripts/lib/stats.js';
import { promptWindows, storyStream } from '../../scripts/lib/prompts.js';
import { KVCache, SequenceState } from '../../src/engine/caches.js';
import { decodeRows, f32ToF16Bits, kvRowBytes, KV_FORMATS, rowStore, type KvFormat } from '../../src/engine/kv-rows.js';
import { checkMemoryBudget, MB } from '../../src/engine/memory-budget.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { emptyView, encodeDelta, replayLog } from '../../src/engine/state-codec.js';
import { runStep } from '../../src/engine/step.js';
import { llama2cConfig } from '../../src/model/config.js';
import { f16ToF32 } from '../../src/model/ggml-quants.js';
import { createRng } from '../../src/model/prng.js';
import { diffStates } from '../support/state-diff.js';
import { devStories, loadStories260K } from '../support/paths.js';
import { loadDefaultModel, maxAbsDiff } from '../support/models.js';

function randomRows(n: number, width: number, seed: number, scale = 4): Float32Array {
  const rng = createRng(seed);
  const rnd = () => rng.next();
  const a = new Float32Array(n * width);
  // Heavy-tailed, with an outlier per row, as real keys are: the outlier sets an int8 row's scale.
  for (let i = 0; i < a.length; i++) a[i] = (rnd() - 0.5) * scale * (rnd() < 0.05 ? 20 : 1);
  return a;
}

/** A row as a store of `format` holds it, decoded: what reading it back must give. */
function rowStoreRoundTrip(format: KvFormat, r: Float32Array) {
  const s = rowStore(format, r.length, 1);
  s.write(0, r);
  return s.take(Int32Array.of(0));
}

describe('f16 encoding', () => {
  it('agrees with the independent half decoder (ggml-quants, bit-exact against gguf) on every finite half', () => {
    for (let h = 0; h < 0x10000; h++) {
      const e = (h >> 10) & 0x1f;
      if (e === 0x1f) continue; // infinities and NaNs: below
      expect(f32ToF16Bits(f16ToF32(h))).toBe(h === 0x8000 ? 0x8000 : h);
    }
  });

  it('rounds to nearest, ties to even, and saturates instead of overflowing', () => {
    expect(f32ToF16Bits(1)).toBe(0x3c00);
    expect(f32ToF16Bits(-2)).toBe(0xc000);
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie: down to even
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie: up to even
    expect(f32ToF16Bits(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01); // above the tie
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(f32ToF16Bits(2 ** -25)).toBe(0x0000); // tie with zero: even
    expect(f32ToF16Bits(3 * 2 ** -25)).toBe(0x0002);
    expect(f32ToF16Bits(65504)).toBe(0x7bff);
    expect(f32ToF16Bits(65520)).toBe(0x7bff); // would round to infinity
    expect(f32ToF16Bits(1e9)).toBe(0x7bff);
    expect(f32ToF16Bits(-Infinity)).toBe(0xfbff);
    expect(Number.isNaN(f16ToF32(f32ToF16Bits(NaN)))).toBe(true);
  });
});

describe('KV row formats', () => {
  const width = 192;
  const n = 300;
  const rows = randomRows(n, width, 3);

  for (const format of KV_FORMATS) {
    it(`${format}: decodes within its stated bound and takes ${format === 'f32' ? '4' : format === 'f16' ? '2' : '1'} byte(s) per element`, () => {
      const s = rowStore(format, width, 8);
      s.grow(512); // rows written after growing, and rows kept across it
      for (let i = 0; i < n; i++) s.write(i, rows.subarray(i * width, (i + 1) * width));
      s.grow(1024);
      const out = decodeRows(s.take(Int32Array.from({ length: n }, (_, i) => i)), width);
      let worst = 0;
      for (let i = 0; i < n; i++) {
        const r = rows.subarray(i * width, (i + 1) * width);
        const max = Math.max(...Array.from(r, Math.abs));
        for (let j = 0; j < width; j++) {
          const x = r[j];
          const err = Math.abs(out[i * width + j] - x);
          // f16: half an ulp of x, or of the subnormal spacing 2^-24 below 2^-14. int8: half a step of the row's scale.
          const bound =
            format === 'f32'
              ? 0
              : format === 'f16'
                ? Math.max(Math.abs(x) * 2 ** -11, 2 ** -25)
                : (max / 127) * 0.5 * (1 + 1e-6);
          worst = Math.max(worst, err / (bound || 1));
          expect(err).toBeLessThanOrEqual(bound);
        }
      }
      if (format !== 'f32') expect(worst).toBeGreaterThan(0.5); // the bound is tight, not vacuous
      expect(s.bytes).toBe(1024 * kvRowBytes(format, width));
      expect(kvRowBytes(format, width) / (4 * width)).toBeCloseTo(
        format === 'f32' ? 1 : format === 'f16' ? 0.5 : 0.25,
        1,
      );
    });
  }

  it('int8 keeps an all-zero row exactly zero', () => {
    const s = rowStore('int8', 4, 2);
    s.write(0, new Float32Array(4));
    const out = decodeRows(s.take(Int32Array.of(0)), 4);
    expect([...out]).toEqual([0, 0, 0, 0]);
  });

  it('KVCache gathers scattered tokens in every format as the rows written', () => {
    for (const format of KV_FORMATS) {
      const kv = new KVCache(2, width, format, 4);
      kv.reserve(n);
      const all = Int32Array.from({ length: n }, (_, i) => i);
      const keys = randomRows(n, width, 5);
      kv.write(1, all, keys, rows);
      const pick = Int32Array.from([0, 1, 2, 50, 51, 299]);
      const g = kv.gather(1, pick);
      expect(g.k.format).toBe(format);
      const gk = decodeRows(g.k, width);
      const gv = decodeRows(g.v, width);
      for (const [j, i] of pick.entries()) {
        const r = kv.row(1, i);
        expect(gk.subarray(j * width, (j + 1) * width)).toEqual(r.k);
        expect(gv.subarray(j * width, (j + 1) * width)).toEqual(r.v);
      }
      expect(kv.bytes).toBe(2 * kv.capacity * (2 * kvRowBytes(format, width) + 2 * 4)); // K and V rows, and two Int32 row indexes, per layer
    }
  });

  it("KVCache keeps each layer's rows in the order computed, as a view, and truncate closes them up", () => {
    for (const format of KV_FORMATS) {
      const kv = new KVCache(2, width, format, 4);
      kv.reserve(8);
      const keys = randomRows(8, width, 7);
      const vals = randomRows(8, width, 8);
      const row = (a: Float32Array, i: number) => a.subarray(i * width, (i + 1) * width);
      // layer 1 computes tokens 0, 2, 5 (a pruned prefill), then 7 (a decode step), then 3 and 1 (revived)
      const order = [0, 2, 5, 7, 3, 1];
      for (const i of order) kv.write(1, Int32Array.of(i), row(keys, i).slice(), row(vals, i).slice());
      const all = kv.layerRows(1);
      expect([...all.tokens]).toEqual(order);
      expect(kv.count(1)).toBe(6);
      expect(kv.count(0)).toBe(0);
      const ks = decodeRows(all.k, width);
      for (const [s, i] of order.entries()) {
        expect(kv.rowIndex(1, i)).toBe(s);
        expect(ks.subarray(s * width, (s + 1) * width)).toEqual(kv.row(1, i).k);
      }
      expect(kv.rowIndex(1, 4)).toBe(-1);
      expect(() => kv.gather(1, Int32Array.of(4))).toThrow(/no row/);
      const before = new Map(order.map((i) => [i, kv.row(1, i)]));
      kv.truncate(4); // forgets 5 and 7: the others close up in their order, rows unchanged (no re-encoding)
      expect([...kv.layerRows(1).tokens]).toEqual([0, 2, 3, 1]);
      for (const i of [0, 2, 3, 1]) expect(kv.row(1, i)).toEqual(before.get(i));
      expect(kv.rowIndex(1, 5)).toBe(-1);
      kv.write(1, Int32Array.of(5), row(keys, 6).slice(), row(vals, 6).slice()); // index 5 appended again
      expect(kv.rowIndex(1, 5)).toBe(4);
      expect(kv.row(1, 5).k).toEqual(decodeRows(rowStoreRoundTrip(format, row(keys, 6)), width));
    }
  });
});

describe('KV formats in the engine (stories260K)', () => {
  let model: LoadedModel;
  const { tok } = loadStories260K();
  const [w] = promptWindows(storyStream(tok, devStories()), 400, 24, 1);
  beforeAll(async () => {
    model = await loadDefaultModel();
  });
  const as = (format: KvFormat): LoadedModel => ({ ...model, config: { ...model.config, kvFormat: format } });

  /** Teacher-forced: prefill, then the window's next tokens one at a time; each step's logits. */
  async function run(format: KvFormat): Promise<Float32Array[]> {
    const m = as(format);
    const seq = new SequenceState(m.config);
    const out = [(await runStep(m, seq, w.prompt, { schedule: null })).logits];
    for (const t of w.next.slice(0, 16)) out.push((await runStep(m, seq, [t], { schedule: null })).logits);
    return out;
  }

  it('f16 and int8 caches stay close to f32 (mean KL of next-token distributions), f16 closer', async () => {
    const ref = await run('f32');
    const kl: Record<string, number> = {};
    for (const f of ['f16', 'int8'] as const) {
      const got = await run(f);
      kl[f] = got.reduce((s, l, i) => s + klDivergence(ref[i], l), 0) / got.length;
    }
    expect(kl.f16).toBeGreaterThan(0); // the format is really in use
    expect(kl.f16).toBeLessThan(1e-4);
    expect(kl.int8).toBeLessThan(1e-2);
    expect(kl.f16).toBeLessThan(kl.int8);
  });

  for (const f of ['f16', 'int8'] as const) {
    it(`the layer graph decodes ${f} rows exactly as the cache's own decoder does`, async () => {
      // The same rows given to the graph as ${f} and, decoded on this side, as f32: the next step must not differ.
      const m = as(f);
      const seq = new SequenceState(m.config);
      await runStep(m, seq, w.prompt.slice(0, 200), { schedule: null });
      const fp = 3;
      const { chunks } = encodeDelta(seq, emptyView(), { fingerprint: fp }); // rows persist as f32, decoded
      const asF32 = replayLog(as('f32').config, chunks, fp).seq;
      expect(asF32.kv.format).toBe('f32');
      const a = await runStep(m, seq, [w.next[0]], { schedule: null });
      const b = await runStep(as('f32'), asF32, [w.next[0]], { schedule: null });
      expect(maxAbsDiff(a.logits, b.logits)).toBeLessThanOrEqual(1e-5);
    });
  }

  it('a session state persisted from an f16 cache replays to the same rows', async () => {
    const m = as('f16');
    const seq = new SequenceState(m.config);
    await runStep(m, seq, w.prompt.slice(0, 64), { schedule: null });
    const fp = 7;
    const { chunks } = encodeDelta(seq, emptyView(), { fingerprint: fp });
    const back = replayLog(m.config, chunks, fp).seq;
    expect(back.kv.format).toBe('f16');
    expect(diffStates(seq, back)).toBeNull();
  });
});

describe('the memory check and KV formats', () => {
  it('counts the KV cache in its format: a context refused with f32 rows fits with int8 ones', () => {
    const cfg = llama2cConfig({
      dim: 576,
      hiddenDim: 1536,
      nLayers: 30,
      nHeads: 9,
      nKvHeads: 3,
      vocabSize: 512,
      seqLen: 8192,
    });
    const q = { format: 'int8', kernel: 'integer' } as const;
    expect(() => checkMemoryBudget('m', { ...cfg, kvFormat: 'f32' }, q, 300 * MB)).toThrow(
      /KV cache 360\.0 MB as f32.*KV_FORMAT/,
    );
    const e = checkMemoryBudget('m', { ...cfg, kvFormat: 'int8' }, q, 300 * MB);
    expect(e.kvCache).toBe(30 * 2 * 8192 * (192 + 4));
  });
});

describe("a state's bytes, as the isolate room counts them (src/worker/groups/isolate-room.ts)", () => {
  const cfg = {
    ...llama2cConfig({ dim: 64, hiddenDim: 172, nLayers: 5, nHeads: 8, nKvHeads: 4, vocabSize: 512, seqLen: 512 }),
    kvFormat: 'int8' as KvFormat,
  };
  it.each([1, 63, 64, 65, 300, 512])(
    'bytesAt(%i) is what a state holds once grown to that many tokens, its Aux entries at most one per token',
    (n) => {
      for (const format of KV_FORMATS) {
        const seq = new SequenceState({ ...cfg, kvFormat: format });
        const predicted = seq.bytesAt(n, false);
        const withAux = seq.bytesAt(n, true);
        seq.append(Array.from({ length: n }, (_, i) => i % 512));
        expect(seq.bytes).toBe(predicted);
        for (let i = 0; i < n; i++) seq.park(i, new Float32Array(cfg.dim));
        expect(seq.bytes).toBe(withAux);
        // growing no further costs nothing more
        expect(seq.bytesAt(n, true)).toBe(withAux);
      }
    },
  );
  it('KVCache.bytesAt(capacity) equals its bytes after reserve, growing by doubling or exactly', () => {
    const kv = new KVCache(3, 32, 'int8');
    for (const [n, exact] of [
      [100, false],
      [129, true],
      [1000, false],
    ] as const) {
      const cap = kv.capacityFor(n, exact);
      kv.reserve(n, exact);
      expect(kv.capacity).toBe(cap);
      expect(kv.bytes).toBe(kv.bytesAt(cap));
    }
  });
});

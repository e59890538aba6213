/**
 * int8 weight products with per-row activation scales (src/shards/int8-rows.ts; issue 27, docs/PREFILL.md):
 * - each form's graph against a float64 reference written here from the definition (per-row symmetric
 *   rounding of x, asymmetric per-channel int8 weights): the integers onnxruntime computes are the ones meant;
 * - SmolLM2 built with the row2 and rowx kernels (int8 weights in memory, head included) against the
 *   exact-weights fixtures at 512 and 2048 tokens (mean KL <= 0.005, the bound for a default form; llama.cpp's
 *   own drift is 0.0048), and the 8 reference chat replies: at least as many equal to the exact ones up to their
 *   first near-tie as llama.cpp's (4 of 8; the int8 forms keep 5, docs/PREFILL.md).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { locateServedGguf } from '../../scripts/lib/served-model.js';
import { sourceFromGguf } from '../../scripts/lib/shard-tasks.js';
import { initNodeRuntime } from '../../scripts/lib/node-env.js';
import { loadModel, type LoadedModel } from '../../src/engine/model.js';
import { parseGgufKernels } from '../../src/model/quant.js';
import { createGraphSession } from '../../src/runtime/onnx-runtime.js';
import { buildGgufShards } from '../../src/shards/build-shards.js';
import { int8Row2Linear, int8RowLinear, int8RowOutlierLinear } from '../../src/shards/int8-rows.js';
import type { LinearEmitter } from '../../src/shards/layer-graphs.js';
import { GraphBuilder } from '../../src/shards/onnx-builder.js';
import { type ChatFixture, compareLogits, fixture, greedyChatReplies, type LogitsFixture } from '../support/smollm2.js';

beforeAll(() => initNodeRuntime());

async function run(linear: LinearEmitter, w: Float32Array, x: Float32Array, rows: number, out: number, inp: number) {
  const b = new GraphBuilder('rows');
  const xin = b.input('x', 'float32', [rows, inp]);
  b.output(linear(b, xin, 'w', w, out, inp), 'y', 'float32', [rows, out]);
  const s = await createGraphSession('rows', b.toBytes());
  const y = (await s.run({ x: { data: x, dims: [rows, inp] } })).y.data as Float32Array;
  await s.release();
  return y;
}

/** Asymmetric int8 per output row of w [out, inp], as the definition says: 255 levels over [min(0, lo), max(0, hi)]. */
function weightsRef(w: Float32Array, out: number, inp: number) {
  const deq = new Float64Array(out * inp);
  for (let r = 0; r < out; r++) {
    let lo = 0;
    let hi = 0;
    for (let c = 0; c < inp; c++) {
      lo = Math.min(lo, w[r * inp + c]);
      hi = Math.max(hi, w[r * inp + c]);
    }
    const s = Math.fround((hi - lo) / 255) || 1;
    const z = Math.max(-128, Math.min(127, Math.round(-128 - lo / s)));
    for (let c = 0; c < inp; c++) {
      const q = Math.max(-128, Math.min(127, Math.round(w[r * inp + c] / s) + z));
      deq[r * inp + c] = (q - z) * s;
    }
  }
  return deq;
}

/** One row rounded to 255 symmetric levels of max|row| / 127 (ties to even, as onnxruntime's Round). */
function roundRow(x: Float64Array): Float64Array {
  let amax = 0;
  for (const v of x) amax = Math.max(amax, Math.abs(v));
  const s = Math.fround(Math.max(amax, 1e-30) / 127);
  return x.map((v) => {
    const t = Math.fround(v / s);
    const r = Math.round(t);
    return (Math.abs(t - Math.trunc(t)) === 0.5 && r % 2 !== 0 ? r - 1 : r) * s;
  });
}

function product(x: Float64Array[], deq: Float64Array, out: number, inp: number): Float64Array {
  const y = new Float64Array(x.length * out);
  x.forEach((row, r) => {
    for (let o = 0; o < out; o++) {
      let acc = 0;
      for (let k = 0; k < inp; k++) acc += row[k] * deq[o * inp + k];
      y[r * out + o] = acc;
    }
  });
  return y;
}

function maxRel(ours: Float32Array, ref: Float64Array): number {
  let e = 0;
  let m = 0;
  ref.forEach((v, i) => {
    e = Math.max(e, Math.abs(ours[i] - v));
    m = Math.max(m, Math.abs(v));
  });
  return e / m;
}

describe('int8 rows against their definition', () => {
  const rows = 6;
  const inp = 96;
  const out = 40;
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1;
  const w = Float32Array.from({ length: out * inp }, rnd);
  const x = Float32Array.from({ length: rows * inp }, rnd);
  for (let r = 0; r < rows; r++) x[r * inp + 5] *= 40 * (r + 1); // an outlier channel, stronger each row
  const deq = weightsRef(w, out, inp);
  const xRows = Array.from({ length: rows }, (_, r) => Float64Array.from(x.subarray(r * inp, (r + 1) * inp)));

  it('row: each row rounded with its own scale, times the int8 weights (relative difference < 1e-5)', async () => {
    const ref = product(xRows.map(roundRow), deq, out, inp);
    expect(maxRel(await run(int8RowLinear, w, x, rows, out, inp), ref)).toBeLessThan(1e-5);
  });

  it("row2: the row's rounding plus its residual's rounding (relative difference < 1e-5), ~250x closer to x than one term", async () => {
    const terms = xRows.map((row) => {
      const first = roundRow(row);
      const second = roundRow(row.map((v, k) => v - first[k]));
      return first.map((v, k) => v + second[k]);
    });
    const y = await run(int8Row2Linear, w, x, rows, out, inp);
    expect(maxRel(y, product(terms, deq, out, inp))).toBeLessThan(1e-5);
    const exactX = product(xRows, deq, out, inp); // the weights' rounding only
    const one = await run(int8RowLinear, w, x, rows, out, inp);
    expect(maxRel(y, exactX) * 50).toBeLessThan(maxRel(one, exactX));
  });

  it('rowx: the k largest channels in f32, the rest rounded per row (relative difference < 1e-5)', async () => {
    const k = 4;
    const chanMax = Array.from({ length: inp }, (_, c) => Math.max(...xRows.map((r) => Math.abs(r[c]))));
    const top = new Set([...chanMax.keys()].sort((a, b) => chanMax[b] - chanMax[a]).slice(0, k));
    const ref = xRows.map((row) => {
      const rest = roundRow(row.map((v, c) => (top.has(c) ? 0 : v)));
      return rest.map((v, c) => (top.has(c) ? row[c] : v));
    });
    expect(maxRel(await run(int8RowOutlierLinear(k), w, x, rows, out, inp), product(ref, deq, out, inp))).toBeLessThan(
      1e-5,
    );
  });
});

/**
 * row2 everywhere: every product with two int8 activation terms, the head too (int8 weights in memory throughout).
 * rowx: one int8 term per row with the run's 32 largest channels in f32, w2 in row2, the row2 head.
 */
for (const kernel of ['attn=row2,ffn=row2,head=row2', 'attn=rowx,ffn=rowx,head=row2']) {
  describe(`SmolLM2 with ${kernel} against the exact-weights references`, () => {
    const exact = fixture<LogitsFixture>('logits-exact.json');
    const chat = fixture<ChatFixture>('chat-greedy.json');
    let model: LoadedModel;
    beforeAll(async () => {
      const source = await sourceFromGguf((await locateServedGguf()).path, 'smollm2-int8-rows');
      const k = parseGgufKernels(kernel);
      if ('error' in k) throw new Error(k.error);
      const built = await buildGgufShards({ ...source, kernels: k.kernels, headParts: 2 });
      model = await loadModel(JSON.stringify(built.manifest), async (f) => built.files.get(f)!, {
        memoryBudgetBytes: Infinity,
      });
    }, 600_000);

    for (const name of ['p512', 'p2048']) {
      it(`${name}: mean KL <= 0.005`, async () => {
        const p = exact.prompts.find((x) => x.name === name)!;
        const c = await compareLogits(model, p);
        console.log(
          `[${kernel} vs exact] ${name}: mean KL ${c.mean.toExponential(2)}, max ${c.max.toExponential(2)}, top-1 ${c.top1}/${c.kls.length}`,
        );
        expect(c.mean).toBeLessThanOrEqual(0.005);
      }, 600_000);
    }

    // No int8 form keeps all 8 replies up to their near-tie (docs/PREFILL.md: the int8 weights' own rounding moves
    // logit gaps of 0.02-0.07 at 3 of them); the bound is llama.cpp's, from the same fixture: it keeps 4 of 8.
    it('keeps at least as many of the 8 chat replies equal to the exact ones up to their first near-tie as llama.cpp does', async () => {
      const before = (at: number | null, tie: number | null) => at !== null && (tie === null || at < tie);
      const llamaKeeps = chat.prompts.filter((c) => !before(c.llamacpp_departs_at, c.first_near_tie)).length;
      const departs: string[] = [];
      let keeps = 0;
      for (const { prompt: c, tokens, ref } of await greedyChatReplies(model, chat)) {
        const at = ref.slice(0, c.first_near_tie ?? ref.length).findIndex((t, k) => tokens[k] !== t);
        if (at < 0) keeps++;
        else departs.push(`${JSON.stringify(c.messages[0].content)} at ${at} (exact margin ${c.exact.margins[at]})`);
      }
      console.log(
        `[${kernel} chat] ${keeps}/8 equal up to their near-tie (llama.cpp ${llamaKeeps}/8); departs: ${departs.join('; ') || 'none'}`,
      );
      expect(llamaKeeps).toBe(4);
      expect(keeps).toBeGreaterThanOrEqual(llamaKeeps);
    }, 900_000);
  });
}

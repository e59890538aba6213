/**
 * Quantized formats in the engine, against run.c's forward (test/support/reference-forward.ts).
 *
 * Two comparisons per format:
 * 1. Against the f32 reference: the quantization cost, bounded by the tolerances below (measured on
 *    these prompts with about 2x headroom; docs/QUANTIZATION.md has perplexity on the dev text).
 * 2. For the weight-only kernels, against the reference run on the *dequantized* weights: this must
 *    agree to float rounding, which proves the graphs implement exactly the stored quantization
 *    (layout, scales, nibble order, padding) whichever kernel runs it.
 */
import { describe, expect, it } from 'vitest';
import { SequenceState } from '../../src/engine/caches.js';
import { loadModel, type LoadedModel } from '../../src/engine/model.js';
import { runStep } from '../../src/engine/step.js';
import { randomCheckpoint, type Checkpoint, type LayerWeights } from '../../src/model/checkpoint.js';
import type { QuantSpec } from '../../src/model/quant.js';
import { buildShards } from '../../src/shards/build-shards.js';
import {
  dequantizeInt4,
  dequantizeInt8,
  quantizeInt4,
  quantizeInt8,
  quantizeInt8Rows,
} from '../../src/shards/quantize.js';
import { klDivergence } from '../../scripts/lib/stats.js';
import { initNodeRuntime } from '../../scripts/lib/node-env.js';
import { loadStories260K, readBytes, TOK512_BIN } from '../support/paths.js';
import { maxAbsDiff, SMALL_GQA } from '../support/models.js';
import { ReferenceModel } from '../support/reference-forward.js';

interface Tolerance {
  /** max |logit - f32 reference logit| over the vocabulary, every step */
  maxAbs: number;
  /** KL(f32 reference || quantized) of the next-token distributions, every step */
  kl: number;
}

/**
 * Stated tolerances against the f32 reference (stories260K logits span about +-17).
 * int8 weights move a logit by at most ~0.35 here; dynamic int8 activations (kernel 'integer') add
 * about as much again; int4 with blocks of 32 on a 64-wide model is coarse (a 260K-parameter model
 * has no redundancy to spare), which is why it is not the default for small models.
 */
const TOLERANCE: Record<string, Tolerance> = {
  'int8/dequant': { maxAbs: 0.75, kl: 0.005 },
  'int8/integer': { maxAbs: 1.5, kl: 0.01 },
  'int4/dequant': { maxAbs: 8, kl: 0.75 },
  'int4/nbits': { maxAbs: 8, kl: 0.75 },
};

const FORMATS: QuantSpec[] = [
  { format: 'int8', kernel: 'dequant' },
  { format: 'int8', kernel: 'integer' },
  { format: 'int4', kernel: 'dequant', blockSize: 32 },
  { format: 'int4', kernel: 'nbits', blockSize: 32 },
];

async function load(ck: Checkpoint, quant: QuantSpec): Promise<LoadedModel> {
  const built = await buildShards({
    name: 'q',
    checkpoint: ck,
    tokenizerBytes: readBytes(TOK512_BIN),
    synthetic: true,
    source: { file: 'q' },
    quant,
  });
  initNodeRuntime();
  return loadModel(JSON.stringify(built.manifest), async (f) => built.files.get(f)!);
}

/** Reference logits after the prompt and after each extra token. */
function referenceLogits(ck: Checkpoint, prompt: number[], extra: number[]): Float32Array[] {
  const ref = new ReferenceModel(ck);
  const out: Float32Array[] = [];
  [...prompt, ...extra].forEach((t, pos) => {
    const l = ref.forward(t, pos);
    if (pos >= prompt.length - 1) out.push(l);
  });
  return out;
}

/** Engine logits: the prompt in one (dense) prefill step, then one decode step per extra token. */
async function engineLogits(model: LoadedModel, prompt: number[], extra: number[]): Promise<Float32Array[]> {
  const seq = new SequenceState(model.config);
  const out = [(await runStep(model, seq, prompt, { schedule: null })).logits.slice()];
  for (const t of extra) out.push((await runStep(model, seq, [t], { schedule: null })).logits.slice());
  return out;
}

/** The checkpoint with every matrix the shards quantize replaced by its dequantized self. */
function dequantizedCheckpoint(ck: Checkpoint, q: QuantSpec): Checkpoint {
  const { dim, hiddenDim, kvDim, vocabSize } = ck.config;
  const rt = (w: Float32Array, out: number, inp: number) =>
    q.format === 'int8'
      ? dequantizeInt8(quantizeInt8(w, out, inp))
      : dequantizeInt4(quantizeInt4(w, out, inp, q.blockSize!));
  // Per-row scales (int8) and per-row blocks (int4) make this equal to quantizing the stacked matrices.
  const layers: LayerWeights[] = ck.layers.map((w) => ({
    ...w,
    wq: rt(w.wq, dim, dim),
    wk: rt(w.wk, kvDim, dim),
    wv: rt(w.wv, kvDim, dim),
    wo: rt(w.wo, dim, dim),
    w1: rt(w.w1, hiddenDim, dim),
    w2: rt(w.w2, dim, hiddenDim),
    w3: rt(w.w3, hiddenDim, dim),
  }));
  // The classifier is quantized in the format, even when tied; the embedding table becomes int8 rows.
  const emb = quantizeInt8Rows(ck.tokenEmbedding, vocabSize, dim);
  const tokenEmbedding = Float32Array.from(emb.q, (v, i) => v * emb.scales[Math.floor(i / dim)]);
  return { ...ck, layers, tokenEmbedding, wcls: rt(ck.wcls, vocabSize, dim), sharedClassifier: false };
}

const stories = loadStories260K();
const CASES: { name: string; ck: Checkpoint; prompt: number[]; extra: number[] }[] = [
  {
    name: 'stories260K',
    ck: stories.ck,
    prompt: stories.tok.encode('Once upon a time, there was a little girl named Lily. She loved to play outside.', {
      bos: true,
    }),
    extra: [13, 410, 300],
  },
  {
    name: 'a seeded random GQA model',
    ck: randomCheckpoint(SMALL_GQA),
    prompt: Array.from({ length: 70 }, (_, i) => (i * 37 + 1) % 512),
    extra: [5, 6, 7],
  },
];

describe.each(CASES)('quantized formats on $name', ({ ck, prompt, extra }) => {
  const ref = referenceLogits(ck, prompt, extra);

  it.each(FORMATS.map((q) => [`${q.format}/${q.kernel}`, q] as const))(
    '%s stays within the stated tolerance of the f32 reference',
    async (label, q) => {
      const ours = await engineLogits(await load(ck, q), prompt, extra);
      const tol = TOLERANCE[label];
      expect(ours).toHaveLength(ref.length);
      ours.forEach((l, k) => {
        expect(maxAbsDiff(l, ref[k])).toBeLessThanOrEqual(tol.maxAbs);
        expect(klDivergence(ref[k], l)).toBeLessThanOrEqual(tol.kl);
      });
    },
  );

  it.each(FORMATS.filter((q) => q.kernel !== 'integer').map((q) => [`${q.format}/${q.kernel}`, q] as const))(
    '%s equals the reference forward on the dequantized weights (1e-4)',
    async (_, q) => {
      const exact = referenceLogits(dequantizedCheckpoint(ck, q), prompt, extra);
      const ours = await engineLogits(await load(ck, q), prompt, extra);
      ours.forEach((l, k) => expect(maxAbsDiff(l, exact[k])).toBeLessThanOrEqual(1e-4));
    },
  );

  it('int8 without folding (DequantizeLinear on every run) gives the same logits as folded', async () => {
    const built = await buildShards({
      name: 'q',
      checkpoint: ck,
      tokenizerBytes: readBytes(TOK512_BIN),
      synthetic: true,
      source: { file: 'q' },
      quant: FORMATS[0],
    });
    initNodeRuntime();
    const read = async (f: string) => built.files.get(f)!;
    const folded = await engineLogits(await loadModel(JSON.stringify(built.manifest), read), prompt, extra);
    const perRun = await engineLogits(
      await loadModel(JSON.stringify(built.manifest), read, { foldDequantize: false }),
      prompt,
      extra,
    );
    // Same weights, different kernels (ORT fuses differently around a DequantizeLinear): float rounding only.
    perRun.forEach((l, k) => expect(maxAbsDiff(l, folded[k])).toBeLessThanOrEqual(2e-5));
  });
});

import { describe, expect, it } from 'vitest';
import {
  parseLlama2cCheckpoint,
  randomCheckpoint,
  serializeLlama2cCheckpoint,
  type Checkpoint,
} from '../../src/model/checkpoint.js';
import { validateConfig, type ModelConfig } from '../../src/model/config.js';
import { ModelFormatError } from '../../src/model/errors.js';
import { expectFormatError } from '../support/format-errors.js';
import { readBytes, STORIES260K_BIN } from '../support/paths.js';

const FILE = 'stories260K.bin';
const HEADER_BYTES = 28;

function withHeader(bytes: Uint8Array, patch: Record<number, number>): Uint8Array {
  const copy = bytes.slice();
  const view = new DataView(copy.buffer);
  for (const [i, v] of Object.entries(patch)) view.setInt32(Number(i) * 4, v, true);
  return copy;
}

function expectSameWeights(a: Checkpoint, b: Checkpoint): void {
  expect(b.config).toEqual(a.config);
  expect(b.sharedClassifier).toBe(a.sharedClassifier);
  expect(b.tokenEmbedding).toEqual(a.tokenEmbedding);
  expect(b.rmsFinal).toEqual(a.rmsFinal);
  expect(b.wcls).toEqual(a.wcls);
  expect(b.layers).toEqual(a.layers);
}

describe('parseLlama2cCheckpoint on stories260K', () => {
  const bytes = readBytes(STORIES260K_BIN);
  const ck = parseLlama2cCheckpoint(bytes, FILE);

  it('reads the header documented in SOURCE.md', () => {
    expect(bytes.length).toBe(1056540);
    expect(ck.config).toEqual({
      dim: 64,
      hiddenDim: 172,
      nLayers: 5,
      nHeads: 8,
      nKvHeads: 4,
      vocabSize: 512,
      seqLen: 512,
      headSize: 8,
      kvDim: 32,
      normEps: 1e-5,
      ropeTheta: 10000,
    });
    expect(ck.sharedClassifier).toBe(true);
    expect(ck.wcls).toBe(ck.tokenEmbedding);
  });

  it('has every weight buffer at its documented shape', () => {
    const { dim, hiddenDim, kvDim, vocabSize } = ck.config;
    expect(ck.tokenEmbedding.length).toBe(vocabSize * dim);
    expect(ck.rmsFinal.length).toBe(dim);
    expect(ck.layers).toHaveLength(5);
    for (const l of ck.layers) {
      expect(l.rmsAtt.length).toBe(dim);
      expect(l.wq.length).toBe(dim * dim);
      expect(l.wk.length).toBe(kvDim * dim);
      expect(l.wv.length).toBe(kvDim * dim);
      expect(l.wo.length).toBe(dim * dim);
      expect(l.rmsFfn.length).toBe(dim);
      expect(l.w1.length).toBe(hiddenDim * dim);
      expect(l.w2.length).toBe(dim * hiddenDim);
      expect(l.w3.length).toBe(hiddenDim * dim);
    }
    // Spot-check offsets: the first float after the header is token_embedding[0][0], and the
    // layer-1 slice of rms_att starts dim floats into that section.
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    expect(ck.tokenEmbedding[0]).toBe(view.getFloat32(HEADER_BYTES, true));
    const rmsAttOff = HEADER_BYTES + 512 * 64 * 4;
    expect(ck.layers[1].rmsAtt[0]).toBe(view.getFloat32(rmsAttOff + 64 * 4, true));
  });

  it('copies into fresh buffers and accepts unaligned input', () => {
    const padded = new Uint8Array(bytes.length + 1);
    padded.set(bytes, 1);
    const unaligned = parseLlama2cCheckpoint(padded.subarray(1), FILE);
    expectSameWeights(ck, unaligned);
    expect(unaligned.tokenEmbedding.buffer).not.toBe(padded.buffer);
    padded.fill(0);
    expect(unaligned.tokenEmbedding).toEqual(ck.tokenEmbedding);
  });

  it('serializes back byte for byte through rms_final; legacy RoPE tables within 1 ulp', () => {
    const out = serializeLlama2cCheckpoint(ck);
    expect(out.length).toBe(bytes.length);
    const freqFloats = 2 * ((512 * 8) / 2);
    const weightsEnd = bytes.length - freqFloats * 4;
    // Exact compare of the bytes the engines actually use.
    expect(Buffer.compare(out.subarray(0, weightsEnd), bytes.subarray(0, weightsEnd))).toBe(0);
    // freq_cis_real/imag are unused by run.c; we recompute them in float32 and PyTorch's cos/sin
    // rounds differently in the last place for ~5% of entries.
    const theirs = new Float32Array(bytes.slice(weightsEnd).buffer);
    const ours = new Float32Array(out.slice(weightsEnd).buffer);
    let maxDiff = 0;
    for (let i = 0; i < theirs.length; i++) maxDiff = Math.max(maxDiff, Math.abs(theirs[i] - ours[i]));
    expect(maxDiff).toBeLessThanOrEqual(2 ** -23);
    expectSameWeights(ck, parseLlama2cCheckpoint(out, 'roundtrip.bin'));
  });
});

describe('checkpoint format errors', () => {
  const bytes = readBytes(STORIES260K_BIN);

  it('rejects a file shorter than the header', () => {
    const e = expectFormatError(
      () => parseLlama2cCheckpoint(bytes.subarray(0, 10), FILE),
      FILE,
      '28 bytes',
      'found 10 bytes',
    );
    expect(e.file).toBe(FILE);
    expectFormatError(() => parseLlama2cCheckpoint(new Uint8Array(0), FILE), 'found 0 bytes');
  });

  it.each([
    ['dim 0', { 0: 0 }, 'dim'],
    ['negative hidden_dim', { 1: -172 }, 'hiddenDim'],
    ['zero layers', { 2: 0 }, 'nLayers'],
    ['dim not divisible by n_heads', { 3: 7 }, 'dim divisible by nHeads'],
    ['n_heads not divisible by n_kv_heads', { 4: 3 }, 'nHeads divisible by nKvHeads'],
    ['vocab_size 0', { 5: 0 }, 'vocabSize'],
    ['seq_len 0', { 6: 0 }, 'seqLen'],
    ['odd head size', { 0: 24 }, 'even headSize'],
  ])('rejects a header with %s', (_name, patch, fragment) => {
    expectFormatError(
      () => parseLlama2cCheckpoint(withHeader(bytes, patch), FILE),
      FILE,
      fragment,
      'header [dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len]',
    );
  });

  it('names a newer llama2.c export instead of misreading its magic as dim', () => {
    expectFormatError(
      () => parseLlama2cCheckpoint(withHeader(bytes, { 0: 0x616b3432, 1: 1 }), FILE),
      'legacy v0',
      'ak42',
      'version 1',
    );
  });

  it('rejects a size that does not match the header, naming both sizes', () => {
    expectFormatError(
      () => parseLlama2cCheckpoint(bytes.subarray(0, bytes.length - 4), FILE),
      FILE,
      'expected 1056540 bytes',
      'found 1056536 bytes',
    );
    const longer = new Uint8Array(bytes.length + 3);
    longer.set(bytes);
    expectFormatError(() => parseLlama2cCheckpoint(longer, FILE), 'expected 1056540 bytes', 'found 1056543 bytes');
    // A negative vocab_size promises a separate classifier that this file does not have.
    expectFormatError(
      () => parseLlama2cCheckpoint(withHeader(bytes, { 5: -512 }), FILE),
      `expected ${1056540 + 512 * 64 * 4} bytes`,
      'separate classifier',
      'found 1056540 bytes',
    );
    // A plausible-but-wrong header (e.g. another model's) is caught by the size check.
    expectFormatError(
      () => parseLlama2cCheckpoint(withHeader(bytes, { 1: 173 }), FILE),
      'hidden_dim 173',
      'found 1056540 bytes',
    );
  });

  it('validateConfig rejects inconsistent derived fields', () => {
    const good: ModelConfig = {
      dim: 64,
      hiddenDim: 172,
      nLayers: 5,
      nHeads: 8,
      nKvHeads: 4,
      vocabSize: 512,
      seqLen: 512,
      headSize: 8,
      kvDim: 32,
      normEps: 1e-5,
      ropeTheta: 10000,
    };
    expect(() => validateConfig(good, 'x')).not.toThrow();
    expect(() => validateConfig({ ...good, dim: 64.5 }, 'x')).toThrow(ModelFormatError);
    expect(() => validateConfig({ ...good, kvDim: 64 }, 'x')).toThrow(/kvDim/);
    expect(() => validateConfig({ ...good, headSize: 16 }, 'x')).toThrow(/headSize/);
    expect(() => validateConfig({ ...good, normEps: 0 }, 'x')).toThrow(/normEps/);
  });
});

describe('randomCheckpoint', () => {
  const cfg = { dim: 96, hiddenDim: 256, nLayers: 3, nHeads: 6, nKvHeads: 2, vocabSize: 512, seqLen: 256 };

  it('round-trips a separate classifier through a negative vocab_size', () => {
    const ck = randomCheckpoint({ ...cfg, seed: 7, sharedClassifier: false });
    expect(ck.sharedClassifier).toBe(false);
    expect(ck.wcls).not.toBe(ck.tokenEmbedding);
    const bytes = serializeLlama2cCheckpoint(ck);
    expect(new DataView(bytes.buffer).getInt32(20, true)).toBe(-512);
    expectSameWeights(ck, parseLlama2cCheckpoint(bytes, 'random.bin'));
  });

  it('shares the embedding buffer by default and survives a round trip', () => {
    const ck = randomCheckpoint({ ...cfg, seed: 7 });
    expect(ck.wcls).toBe(ck.tokenEmbedding);
    const back = parseLlama2cCheckpoint(serializeLlama2cCheckpoint(ck), 'random.bin');
    expect(back.wcls).toBe(back.tokenEmbedding);
    expectSameWeights(ck, back);
  });

  it('has norm gains near 1 and small matrix weights', () => {
    const ck = randomCheckpoint({ ...cfg, seed: 3 });
    for (const g of [ck.rmsFinal, ...ck.layers.map((l) => l.rmsAtt)]) {
      for (const v of g) expect(Math.abs(v - 1)).toBeLessThan(0.2);
    }
    const wq = ck.layers[0].wq;
    const std = Math.sqrt(wq.reduce((s, v) => s + v * v, 0) / wq.length);
    expect(std).toBeGreaterThan(0.05);
    expect(std).toBeLessThan(0.2);
  });

  it('rejects invalid configs with ModelFormatError', () => {
    expect(() => randomCheckpoint({ ...cfg, nKvHeads: 4, seed: 1 })).toThrow(ModelFormatError);
  });
});

import { describe, expect, it } from 'vitest';
import { EngineError } from '../../src/engine/errors.js';
import {
  checkMemoryBudget,
  DEFAULT_MEMORY_BUDGET_BYTES,
  defaultQuant,
  estimateMemory,
  MB,
} from '../../src/engine/memory-budget.js';
import { loadModel } from '../../src/engine/model.js';
import { randomCheckpoint, type RandomCheckpointOptions } from '../../src/model/checkpoint.js';
import type { ModelConfig } from '../../src/model/config.js';
import { ModelFormatError } from '../../src/model/errors.js';
import { parseManifest, sha256Hex } from '../../src/model/manifest.js';
import { createRng } from '../../src/model/prng.js';
import type { QuantSpec } from '../../src/model/quant.js';
import { buildShards, type BuiltShards } from '../../src/shards/build-shards.js';
import { buildLayerGraph, f32Format, type LinearEmitter } from '../../src/shards/layer-graphs.js';
import { int8DequantLinear } from '../../src/shards/quant-linear.js';
import { dequantizeInt4, dequantizeInt8, int4At, quantizeInt4, quantizeInt8 } from '../../src/shards/quantize.js';
import { initNodeRuntime, memoryBudgetFromEnv } from '../../scripts/lib/node-env.js';
import { readBytes, TOK512_BIN } from '../support/paths.js';

/** Gaussian matrix with a few large outliers and an all-zero row, the cases that break naive scaling. */
function randomMatrix(seed: number, out: number, inp: number): Float32Array {
  const rng = createRng(seed);
  const w = Float32Array.from({ length: out * inp }, () => rng.normal() * 0.05);
  for (let k = 0; k < 5; k++) w[Math.floor(rng.next() * w.length)] = (rng.next() - 0.5) * 4;
  w.fill(0, 0, inp); // row 0
  return w;
}

// A float32 product q*s can differ from the exact one by half an ulp: allow a relative 1e-6 on top.
const SLACK = 1 + 1e-6;

describe('int8 per-channel symmetric quantization', () => {
  it.each([
    [1, 64, 64],
    [2, 344, 64],
    [3, 64, 172],
    [4, 7, 5],
  ])('round-trips seed %i [%i x %i] within half a step of each output channel', (seed, out, inp) => {
    const w = randomMatrix(seed, out, inp);
    const t = quantizeInt8(w, out, inp);
    const back = dequantizeInt8(t);
    for (let r = 0; r < out; r++) {
      let amax = 0;
      for (let c = 0; c < inp; c++) amax = Math.max(amax, Math.abs(w[r * inp + c]));
      expect(t.scales[r]).toBeCloseTo(amax / 127, 7);
      for (let c = 0; c < inp; c++) {
        const q = t.q[c * out + r]; // stored transposed, [in, out]
        expect(Math.abs(q)).toBeLessThanOrEqual(127);
        expect(Math.abs(back[r * inp + c] - w[r * inp + c])).toBeLessThanOrEqual((t.scales[r] / 2) * SLACK);
      }
    }
    // The row's largest magnitude maps to +-127 exactly, so the full int8 range is used.
    expect(Math.max(...Array.from(t.q, Math.abs))).toBe(127);
    // The all-zero row stays exactly zero.
    expect(back.subarray(0, inp).every((v) => v === 0)).toBe(true);
  });
});

describe('int4 block-wise symmetric quantization', () => {
  it.each([
    [1, 64, 64, 32],
    [2, 344, 64, 16],
    [3, 64, 172, 32], // 172 = 5 full blocks + one of 12: the padded last block
    [4, 9, 100, 64],
  ])('round-trips seed %i [%i x %i] block %i within half a step of each block', (seed, out, inp, bs) => {
    const w = randomMatrix(seed, out, inp);
    const t = quantizeInt4(w, out, inp, bs);
    expect(t.nBlocks).toBe(Math.ceil(inp / bs));
    expect(t.packed.length).toBe(out * t.nBlocks * (bs / 2));
    expect(t.scales.length).toBe(out * t.nBlocks);
    const back = dequantizeInt4(t);
    for (let r = 0; r < out; r++) {
      for (let c = 0; c < inp; c++) {
        const b = Math.floor(c / bs);
        const s = t.scales[r * t.nBlocks + b];
        expect(Math.abs(int4At(t, r, c))).toBeLessThanOrEqual(7);
        expect(Math.abs(back[r * inp + c] - w[r * inp + c])).toBeLessThanOrEqual((s / 2) * SLACK);
      }
    }
  });

  it('packs MatMulNBits layout: element 2k in the low nibble, zero point 8, padding reads as zero', () => {
    // One row, 20 inputs, blocks of 16: the second block holds 4 values and 12 padding nibbles.
    const w = Float32Array.from({ length: 20 }, (_, c) => (c % 2 ? -1 : 1) * (c + 1));
    const t = quantizeInt4(w, 1, 20, 16);
    expect(t.scales[0]).toBeCloseTo(16 / 7, 6);
    expect(t.scales[1]).toBeCloseTo(20 / 7, 6);
    // w[0] = 1 -> round(1 / (16/7)) = 0 -> nibble 8; w[1] = -2 -> round(-0.875) = -1 -> nibble 7.
    expect(t.packed[0]).toBe(8 | (7 << 4));
    // w[15] = -16 -> -7 -> nibble 1 (high nibble of byte 7).
    expect(t.packed[7] >> 4).toBe(1);
    // Bytes 10..15 are padding of block 1 (after its 2 used bytes): both nibbles 8.
    expect(Array.from(t.packed.subarray(10, 16))).toEqual(new Array(6).fill(0x88));
  });

  it('rejects block sizes MatMulNBits cannot run', () => {
    expect(() => quantizeInt4(new Float32Array(64), 1, 64, 24)).toThrow(/power of two/);
    expect(() => quantizeInt4(new Float32Array(64), 1, 64, 8)).toThrow(/power of two/);
  });
});

const TINY: RandomCheckpointOptions = {
  dim: 32,
  hiddenDim: 64,
  nLayers: 2,
  nHeads: 4,
  nKvHeads: 2,
  vocabSize: 512,
  seqLen: 64,
  seed: 3,
};

async function tinyShards(quant?: QuantSpec, opts: RandomCheckpointOptions = TINY): Promise<BuiltShards> {
  return buildShards({
    name: 'tiny',
    checkpoint: randomCheckpoint(opts),
    tokenizerBytes: readBytes(TOK512_BIN),
    synthetic: true,
    source: { file: 'tiny' },
    quant,
  });
}

function load(built: BuiltShards, manifest: object = built.manifest) {
  initNodeRuntime();
  return loadModel(JSON.stringify(manifest), async (f) => built.files.get(f)!);
}

describe('quantized shards: the manifest and the files must agree', () => {
  it('records format, kernel and block size in the manifest', async () => {
    expect((await tinyShards({ format: 'int8', kernel: 'dequant' })).manifest.quant).toEqual({
      format: 'int8',
      kernel: 'dequant',
    });
    expect((await tinyShards({ format: 'int4', kernel: 'nbits', blockSize: 16 })).manifest.quant).toEqual({
      format: 'int4',
      kernel: 'nbits',
      blockSize: 16,
    });
    expect((await tinyShards()).manifest.quant).toEqual({ format: 'f32', kernel: 'matmul' });
  });

  it('shrinks the layer shards about 4x (int8) and 6x (int4, block 32)', async () => {
    const shape = { ...TINY, dim: 256, hiddenDim: 768, nHeads: 4, nKvHeads: 4, nLayers: 1 };
    const layerBytes = async (q?: QuantSpec) => (await tinyShards(q, shape)).manifest.files.layers[0].bytes;
    const f32 = await layerBytes();
    // 1 byte per weight + a scale per channel; 4 bits + a 4-byte scale per 32 weights = 5 bits.
    expect((await layerBytes({ format: 'int8', kernel: 'dequant' })) / f32).toBeLessThan(0.26);
    expect((await layerBytes({ format: 'int4', kernel: 'dequant', blockSize: 32 })) / f32).toBeLessThan(0.165);
  });

  it.each([
    [{ format: 'int3' }, /quant\.format "int3" is not one of f32, int8, int4/],
    [{ format: 'int4', kernel: 'nbits' }, /quant\.blockSize is required for int4/],
    [{ format: 'int4', kernel: 'nbits', blockSize: 24 }, /blockSize 24 must be a power of two/],
    [{ format: 'int8', kernel: 'nbits' }, /quant\.kernel "nbits" cannot run int8 weights/],
    [{ format: 'f32', blockSize: 32 }, /blockSize only applies to int4/],
  ])('rejects the manifest quant record %j', async (quant, message) => {
    const built = await tinyShards({ format: 'int8', kernel: 'dequant' });
    const text = JSON.stringify({ ...built.manifest, quant });
    expect(() => parseManifest(text)).toThrow(ModelFormatError);
    expect(() => parseManifest(text)).toThrow(message);
    await expect(load(built, { ...built.manifest, quant })).rejects.toThrow(message);
  });

  it('rejects shards whose weights are not in the format the manifest names', async () => {
    const int8 = await tinyShards({ format: 'int8', kernel: 'dequant' });
    // An int8 build relabelled int4: the packed tensors are missing.
    await expect(
      load(int8, { ...int8.manifest, quant: { format: 'int4', kernel: 'nbits', blockSize: 32 } }),
    ).rejects.toThrow(
      /layer_00\.onnx: expected wqkv_q4: uint8 \[64, 1, 16\] packed int4 weights.*found only wqkv_q, wqkv_scale/,
    );
    // Same bytes, another kernel: the graph says DequantizeLinear, the manifest says MatMulInteger.
    await expect(load(int8, { ...int8.manifest, quant: { format: 'int8', kernel: 'integer' } })).rejects.toThrow(
      /expected wqkv_q consumed by MatMulInteger \(kernel integer\), found DequantizeLinear/,
    );
    // An int4 build with block 32 claimed to use blocks of 16.
    const int4 = await tinyShards({ format: 'int4', kernel: 'nbits', blockSize: 32 });
    await expect(
      load(int4, { ...int4.manifest, quant: { format: 'int4', kernel: 'nbits', blockSize: 16 } }),
    ).rejects.toThrow(/expected wqkv_q4: uint8 \[64, 2, 8\].*found uint8 \[64, 1, 16\]/);
  });

  it('rejects a layer whose scales tensor has the wrong length, naming file, tensor and both lengths', async () => {
    const built = await tinyShards({ format: 'int8', kernel: 'dequant' });
    const ck = randomCheckpoint(TINY);
    // A faulty emitter: one scale short for the fused QKV projection.
    const shortScales: LinearEmitter = (b, x, name, w, out, inp) => {
      if (name !== 'wqkv') return int8DequantLinear(b, x, name, w, out, inp);
      const t = quantizeInt8(w, out, inp);
      const q = b.tensor(`${name}_q`, 'int8', [inp, out], t.q);
      return b.op('MatMul', [
        x,
        b.op('DequantizeLinear', [q, b.f32(`${name}_scale`, [out - 1], t.scales.subarray(1))], { axis: 1 }),
      ]);
    };
    const bad = buildLayerGraph(ck.config, ck.layers[1], 1, f32Format(shortScales));
    const files = new Map(built.files).set('layer_01.onnx', bad);
    const manifest = structuredClone(built.manifest);
    Object.assign(manifest.files.layers[1], { bytes: bad.byteLength, sha256: await sha256Hex(bad) });
    const err = await load({ manifest, files }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelFormatError);
    expect((err as Error).message).toBe(
      'layer_01.onnx: expected wqkv_scale: 64 float32 scales (one per output channel), found float32 [63] holding 63 values',
    );
  });

  it('loads every format it builds', async () => {
    for (const q of [
      { format: 'f32', kernel: 'matmul' },
      { format: 'int8', kernel: 'dequant' },
      { format: 'int8', kernel: 'integer' },
      { format: 'int4', kernel: 'dequant', blockSize: 16 },
      { format: 'int4', kernel: 'nbits', blockSize: 32 },
    ] as QuantSpec[]) {
      const m = await load(await tinyShards(q));
      expect(m.quant).toEqual(q);
    }
  });
});

function cfg(
  dim: number,
  nLayers: number,
  seqLen: number,
  nHeads = dim / 64,
  hiddenDim = Math.round((dim * 8) / 3 / 32) * 32,
): ModelConfig {
  return {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads: nHeads,
    vocabSize: 32000,
    seqLen,
    headSize: dim / nHeads,
    kvDim: dim,
    normEps: 1e-5,
    ropeTheta: 10000,
  };
}

describe('memory budget', () => {
  const f32: QuantSpec = { format: 'f32', kernel: 'matmul' };
  const int4: QuantSpec = { format: 'int4', kernel: 'nbits', blockSize: 32 };

  it('adds weights as held in memory, KV and Aux caches at full context and the runtime', () => {
    const c = cfg(768, 12, 1024);
    const e = estimateMemory(c, f32);
    expect(e.kvCache).toBe(12 * 2 * 1024 * 768 * 4);
    expect(e.auxCache).toBe(1024 * 768 * 4);
    // the load copies and the activations share the wasm memory: the larger counts
    expect(e.total).toBe(
      e.weights + Math.max(e.weightCopies, e.activations) + e.kvCache + e.auxCache + e.tokenizer + e.runtime,
    );
    // Dequantize-at-load kernels hold f32 matrices (the embedding table is int8 rows in every quantized
    // format); 'integer' holds int8, about a quarter; 'nbits' 4 bits + a scale per 32, about a sixth.
    const embedSaving = 32000 * 768 * 4 - 32000 * (768 + 4);
    expect(estimateMemory(c, { format: 'int8', kernel: 'dequant' }).weights).toBe(e.weights - embedSaving);
    const r8 = estimateMemory(c, { format: 'int8', kernel: 'integer' }).weights / e.weights;
    const r4 = estimateMemory(c, int4).weights / e.weights;
    expect(r8).toBeGreaterThan(0.25);
    expect(r8).toBeLessThan(0.26);
    expect(r4).toBeGreaterThan(0.16);
    expect(r4).toBeLessThan(0.18);
  });

  it('refuses a model that does not fit, saying what is needed, what is allowed and how to fix it', () => {
    const big = cfg(768, 12, 2048); // stories110M's shape
    let err: unknown;
    try {
      checkMemoryBudget('big', big, f32, DEFAULT_MEMORY_BUDGET_BYTES);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EngineError);
    expect((err as EngineError).code).toBe('model_too_large');
    const msg = (err as Error).message;
    expect(msg).toMatch(
      /^model "big" does not fit the memory budget: it needs \d+\.\d MB at its full context of 2048 tokens/,
    );
    expect(msg).toMatch(
      /weights \d+\.\d MB as f32, held as f32; the kernels' copies of them \d+\.\d MB; KV cache 144\.0 MB as f32; Aux Cache 6\.0 MB; activations \d+\.\d MB; tokenizer \d+\.\d MB; runtime 20\.0 MB/,
    );
    expect(msg).toMatch(/the isolate memory budget allows 128\.0 MB/);
    expect(msg).toMatch(/LAZY_EDGE_MEMORY_BUDGET_MB/);
    // The same model fits a budget raised far enough, and the check returns the estimate.
    expect(checkMemoryBudget('big', big, f32, 2048 * MB).total).toBeGreaterThan(128 * MB);
    expect(checkMemoryBudget('big', big, f32, Infinity).total).toBeGreaterThan(128 * MB);
  });

  it('accepts stories260K in every format', () => {
    const c: ModelConfig = {
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
    for (const q of [f32, int4, { format: 'int8', kernel: 'dequant' } as QuantSpec])
      expect(checkMemoryBudget('s', c, q, DEFAULT_MEMORY_BUDGET_BYTES).total).toBeLessThan(30 * MB);
  });

  it('refuses at load time, before reading any shard', async () => {
    const built = await tinyShards();
    let reads = 0;
    initNodeRuntime();
    const p = loadModel(JSON.stringify(built.manifest), async (f) => (reads++, built.files.get(f)!), {
      memoryBudgetBytes: 10 * MB,
    });
    await expect(p).rejects.toThrow(
      /model "tiny" does not fit the memory budget: it needs \d+\.\d MB .* allows 10\.0 MB/,
    );
    expect(reads).toBe(0);
  });

  it('reads the budget from LAZY_EDGE_MEMORY_BUDGET_MB', () => {
    expect(memoryBudgetFromEnv({})).toBe(128 * MB);
    expect(memoryBudgetFromEnv({ LAZY_EDGE_MEMORY_BUDGET_MB: '512' })).toBe(512 * MB);
    expect(memoryBudgetFromEnv({ LAZY_EDGE_MEMORY_BUDGET_MB: 'off' })).toBe(Infinity);
    expect(() => memoryBudgetFromEnv({ LAZY_EDGE_MEMORY_BUDGET_MB: 'lots' })).toThrow(
      /must be a positive number of MiB or "off"/,
    );
  });

  it('picks the default format by model size: int8 folded when small, int8 MatMulInteger when larger, int4 only when nothing else fits', () => {
    const stories260K = cfg(64, 5, 512, 8, 172);
    const stories15M = cfg(288, 6, 256, 6);
    const wide = { ...cfg(768, 12, 512), vocabSize: 512 }; // int8 weights + caches exceed 128 MB, int4 fits
    const stories110M = cfg(768, 12, 1024); // fits nothing
    expect(defaultQuant(stories260K)).toEqual({ format: 'int8', kernel: 'dequant' });
    expect(defaultQuant(stories15M)).toEqual({ format: 'int8', kernel: 'integer' });
    expect(defaultQuant(wide)).toEqual({ format: 'int4', kernel: 'nbits', blockSize: 32 });
    expect(estimateMemory(wide, { format: 'int8', kernel: 'integer' }).total).toBeGreaterThan(
      DEFAULT_MEMORY_BUDGET_BYTES,
    );
    for (const c of [stories260K, stories15M, wide])
      expect(estimateMemory(c, defaultQuant(c)).total).toBeLessThanOrEqual(DEFAULT_MEMORY_BUDGET_BYTES);
    // Nothing fits: the smallest, so that loading refuses with the numbers.
    expect(defaultQuant(stories110M)).toEqual({ format: 'int4', kernel: 'nbits', blockSize: 32 });
    expect(() =>
      checkMemoryBudget('stories110M', stories110M, defaultQuant(stories110M), DEFAULT_MEMORY_BUDGET_BYTES),
    ).toThrow(/does not fit/);
  });
});

/** scripts/quant/bench.ts: what is measured (the strategies, the models, the fixed lengths). */
import { join } from 'node:path';
import { parseLlama2cCheckpoint, type RandomCheckpointOptions } from '../../src/model/checkpoint.js';
import { llama2cConfig, type ModelConfig } from '../../src/model/config.js';
import type { QuantSpec } from '../../src/model/quant.js';
import { DEFAULT_MODEL_DIR, readBytes } from '../lib/node-env.js';

export interface Strategy {
  id: string;
  /** the strategy letter of the brief: a, b, c, d; '' for the f32 baseline */
  letter: string;
  quant: QuantSpec;
  /** fold DequantizeLinear at session creation (only matters for int8/dequant) */
  fold: boolean;
  what: string;
  /** only on the small model, in full mode: block-size variants for the perplexity cost */
  extra?: boolean;
}

export const F32: QuantSpec = { format: 'f32', kernel: 'matmul' };
export const INT8_DQ: QuantSpec = { format: 'int8', kernel: 'dequant' };
export const int4 = (blockSize: number, kernel: 'dequant' | 'nbits'): QuantSpec => ({
  format: 'int4',
  kernel,
  blockSize,
});

export const STRATEGIES: Strategy[] = [
  { id: 'f32', letter: '', quant: F32, fold: true, what: 'f32 MatMul' },
  { id: 'int8-fold', letter: 'a', quant: INT8_DQ, fold: true, what: 'int8 on disk, DequantizeLinear folded at load' },
  {
    id: 'int8-dq-every-run',
    letter: 'b',
    quant: INT8_DQ,
    fold: false,
    what: 'int8, DequantizeLinear + MatMul every run',
  },
  {
    id: 'int8-integer',
    letter: 'd',
    quant: { format: 'int8', kernel: 'integer' },
    fold: true,
    what: 'int8, DynamicQuantizeLinear + MatMulInteger',
  },
  {
    id: 'int4-fold',
    letter: 'a',
    quant: int4(32, 'dequant'),
    fold: true,
    what: 'int4 (block 32) on disk, unpacked and folded at load',
  },
  {
    id: 'int4-nbits',
    letter: 'c',
    quant: int4(32, 'nbits'),
    fold: true,
    what: 'int4 (block 32), MatMulNBits every run',
  },
  {
    id: 'int4-b16-fold',
    letter: 'a',
    quant: int4(16, 'dequant'),
    fold: true,
    what: 'int4 (block 16), folded at load',
    extra: true,
  },
  {
    id: 'int4-b64-fold',
    letter: 'a',
    quant: int4(64, 'dequant'),
    fold: true,
    what: 'int4 (block 64), folded at load',
    extra: true,
  },
];

export interface BenchModel {
  id: string;
  synthetic: boolean;
  /** seeded random weights of this shape (speed and memory only) */
  random?: RandomCheckpointOptions;
  describe: string;
  config: () => ModelConfig;
  /** perplexity on the dev text (real weights only) */
  perplexity: boolean;
  lengths: number[];
  reps: (len: number, quick: boolean) => number;
  decode: (quick: boolean) => number;
  warmup: (quick: boolean) => number[];
}

const RANDOM_768: RandomCheckpointOptions = {
  dim: 768,
  hiddenDim: 2048,
  nLayers: 12,
  nHeads: 12,
  nKvHeads: 12,
  vocabSize: 512,
  seqLen: 2048,
  seed: 1,
};
/** stories15M's body (dim 288, 6 layers), to see where between the two the kernels start to differ */
const RANDOM_288: RandomCheckpointOptions = {
  dim: 288,
  hiddenDim: 768,
  nLayers: 6,
  nHeads: 6,
  nKvHeads: 6,
  vocabSize: 512,
  seqLen: 2048,
  seed: 1,
};

export const MODELS: BenchModel[] = [
  {
    id: 'stories260K',
    synthetic: false,
    describe:
      'The real pretrained model (dim 64, 5 layers, 8 heads / 4 KV heads, hidden 172, vocab 512, trained context 512; 2048 tokens is past its context, measured for speed only).',
    config: () =>
      parseLlama2cCheckpoint(readBytes(join(DEFAULT_MODEL_DIR, 'stories260K.bin')), 'stories260K.bin').config,
    perplexity: true,
    lengths: [512, 2048],
    reps: (_len, quick) => (quick ? 3 : 7),
    decode: (quick) => (quick ? 32 : 128),
    warmup: () => [512, 2048],
  },
  {
    id: 'random-288',
    synthetic: true,
    describe:
      "dim 288, 6 layers, 6 heads, hidden 768, vocab 512, context 2048: stories15M's body with a small vocabulary.",
    random: RANDOM_288,
    config: () => llama2cConfig(RANDOM_288),
    perplexity: false,
    lengths: [512, 2048],
    reps: (_len, quick) => (quick ? 2 : 5),
    decode: (quick) => (quick ? 32 : 64),
    warmup: () => [512, 2048],
  },
  {
    id: 'random-768',
    synthetic: true,
    describe:
      "dim 768, 12 layers, 12 heads, hidden 2048, vocab 512, context 2048: stories110M's body with a small vocabulary.",
    random: RANDOM_768,
    config: () => llama2cConfig(RANDOM_768),
    perplexity: false,
    lengths: [512, 2048],
    reps: (len, quick) => (quick ? 1 : len > 512 ? 2 : 3),
    decode: (quick) => (quick ? 8 : 16),
    warmup: (quick) => (quick ? [] : [512]),
  },
];

/** The token used to measure decode: prefill this many tokens first. */
export const DECODE_CONTEXT = 512;
export const PPL_WINDOW = 512;

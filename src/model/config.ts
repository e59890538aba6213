import { ModelFormatError } from './errors.js';

/** Hyperparameters of a Llama-2 style decoder, with derived sizes precomputed. */
export interface ModelConfig {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
  /** dim / nHeads */
  headSize: number;
  /** nKvHeads * headSize: width of the K and V projections under grouped-query attention. */
  kvDim: number;
  normEps: number;
  ropeTheta: number;
  /**
   * How the KV cache holds its rows (src/engine/kv-rows.ts; default f32). Like `seqLen`, a serving
   * choice made when the model is loaded, not a property of the checkpoint.
   */
  kvFormat?: 'f32' | 'f16' | 'int8';
}

/** The hyperparameters a llama2.c header (or a chosen shape) states; the rest follows from them. */
export type ModelShape = Pick<
  ModelConfig,
  'dim' | 'hiddenDim' | 'nLayers' | 'nHeads' | 'nKvHeads' | 'vocabSize' | 'seqLen'
>;

/** llama2.c's fixed constants (run.c): RMSNorm epsilon and RoPE base. */
export const LLAMA2C_NORM_EPS = 1e-5;
export const LLAMA2C_ROPE_THETA = 10000;

/** A full config for a llama2.c-semantics model of this shape. */
export function llama2cConfig(shape: ModelShape): ModelConfig {
  const { dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen } = shape;
  const headSize = dim / nHeads;
  return {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize,
    seqLen,
    headSize,
    kvDim: nKvHeads * headSize,
    normEps: LLAMA2C_NORM_EPS,
    ropeTheta: LLAMA2C_ROPE_THETA,
  };
}

/**
 * Rejects configs the forward pass cannot run. A garbage header otherwise surfaces later as an
 * out-of-bounds read or a silently wrong model, far away from the file that caused it.
 */
export function validateConfig(c: ModelConfig, file: string): void {
  const ints: Array<keyof ModelShape> = ['dim', 'hiddenDim', 'nLayers', 'nHeads', 'nKvHeads', 'vocabSize', 'seqLen'];
  for (const k of ints) {
    const v: number = c[k];
    if (!Number.isSafeInteger(v) || v <= 0) {
      throw new ModelFormatError(file, `${k} to be a positive integer`, String(v));
    }
  }
  if (c.dim % c.nHeads !== 0) {
    throw new ModelFormatError(file, `dim divisible by nHeads`, `dim ${c.dim}, nHeads ${c.nHeads}`);
  }
  if (c.nHeads % c.nKvHeads !== 0) {
    throw new ModelFormatError(file, `nHeads divisible by nKvHeads`, `nHeads ${c.nHeads}, nKvHeads ${c.nKvHeads}`);
  }
  // Derived fields last, so a bad header is reported by the field that was actually wrong.
  for (const k of ['headSize', 'kvDim'] as const) {
    if (!Number.isSafeInteger(c[k]) || c[k] <= 0) {
      throw new ModelFormatError(file, `${k} to be a positive integer`, String(c[k]));
    }
  }
  if (c.headSize !== c.dim / c.nHeads) {
    throw new ModelFormatError(file, `headSize = dim / nHeads = ${c.dim / c.nHeads}`, String(c.headSize));
  }
  if (c.kvDim !== c.nKvHeads * c.headSize) {
    throw new ModelFormatError(file, `kvDim = nKvHeads * headSize = ${c.nKvHeads * c.headSize}`, String(c.kvDim));
  }
  // RoPE rotates (i, i+1) pairs inside each head.
  if (c.headSize % 2 !== 0) {
    throw new ModelFormatError(file, `even headSize (RoPE rotates pairs)`, String(c.headSize));
  }
  if (!(Number.isFinite(c.normEps) && c.normEps > 0)) {
    throw new ModelFormatError(file, `normEps > 0`, String(c.normEps));
  }
  if (!(Number.isFinite(c.ropeTheta) && c.ropeTheta > 0)) {
    throw new ModelFormatError(file, `ropeTheta > 0`, String(c.ropeTheta));
  }
}

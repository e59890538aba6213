/**
 * Will a model fit the isolate? A Worker isolate has 128 MB (DESIGN.md), and onnxruntime's wasm
 * heap never shrinks, so a model that fits only until its KV cache grows fails late, mid-request,
 * with an opaque out-of-memory. loadModel checks this estimate up front instead.
 * Pure arithmetic over the config and the weight format; docs/QUANTIZATION.md compares it with
 * measured heaps.
 */
import type { ModelConfig } from '../model/config.js';
import { ggufMatrixBytes, ggufTotalWeightBytes, keepsQuantizedWeights, quantLabel, type QuantSpec } from '../model/quant.js';
import { EngineError } from './errors.js';
import { kvRowBytes } from './kv-rows.js';

export const MB = 1024 * 1024;
/** Cloudflare Workers: 128 MB per isolate. */
export const DEFAULT_MEMORY_BUDGET_BYTES = 128 * MB;
/**
 * What the runtime costs before any weight: onnxruntime's initial wasm heap (16 MiB), its compiled
 * code, and the JS engine's own objects. Measured by `npm run quant-bench` (docs/QUANTIZATION.md).
 */
export const RUNTIME_OVERHEAD_BYTES = 24 * MB;

export interface MemoryEstimate {
  /** every weight as held while the model runs (f32 unless the kernel keeps them quantized) */
  weights: number;
  /** K and V for every layer at seqLen tokens, in the config's kvFormat: nLayers * 2 * seqLen * kvRowBytes */
  kvCache: number;
  /** one hidden state per token at most: seqLen * dim * 4 */
  auxCache: number;
  runtime: number;
  /**
   * weights + kvCache + auxCache + runtime: what must fit the budget. Activations are not counted
   * (the engine prefills in chunks, so they stay small next to these; docs/QUANTIZATION.md has measured heaps).
   */
  total: number;
}

/** Bytes of one [out, in] weight matrix as the kernel holds it while running. */
export function matrixBytes(out: number, inp: number, q: QuantSpec): number {
  // A GGUF build's groups differ (estimateMemory sizes each); a lone matrix here is the classifier (part-memory.ts).
  if (q.gguf) return ggufMatrixBytes(out, inp, q.gguf.head);
  if (!keepsQuantizedWeights(q.kernel)) return out * inp * 4;
  if (q.format === 'int8') return out * inp + out * 4; // int8 values + one f32 scale per output channel
  const bs = q.blockSize!;
  const blocks = out * Math.ceil(inp / bs);
  return blocks * (bs / 2 + 4); // two nibbles per byte (the last block padded) + one f32 scale per block
}

/** The embedding table: f32; int8 rows + a scale per row; a GGUF's Q8_0 rows + a scale per block of 32. */
function embeddingBytes(vocab: number, dim: number, q: QuantSpec): number {
  if (q.format === 'f32') return vocab * dim * 4;
  if (q.format === 'gguf') return vocab * dim + vocab * Math.ceil(dim / 32) * 4;
  return vocab * (dim + 4);
}

export function estimateMemory(cfg: ModelConfig, q: QuantSpec): MemoryEstimate {
  const { dim, hiddenDim, kvDim, nLayers, vocabSize, seqLen } = cfg;
  const perLayer =
    matrixBytes(dim + 2 * kvDim, dim, q) + // wq|wk|wv stacked
    matrixBytes(dim, dim, q) + //             wo
    matrixBytes(2 * hiddenDim, dim, q) + //   w1|w3 stacked
    matrixBytes(dim, hiddenDim, q) + //       w2
    2 * dim * 4; //                           RMSNorm gains
  // A GGUF build holds each group of matrices as its own kernel does (src/model/quant.ts).
  const weights = q.gguf
    ? ggufTotalWeightBytes(cfg, q.gguf)
    : nLayers * perLayer +
    embeddingBytes(vocabSize, dim, q) +
    matrixBytes(vocabSize, dim, q) + //       classifier (its own copy even when tied)
    dim * 4; //                               final RMSNorm
  const kvCache = nLayers * 2 * seqLen * kvRowBytes(cfg.kvFormat ?? 'f32', kvDim);
  const auxCache = seqLen * dim * 4;
  const runtime = RUNTIME_OVERHEAD_BYTES;
  return {
    weights,
    kvCache,
    auxCache,
    runtime,
    total: weights + kvCache + auxCache + runtime,
  };
}

const mb = (b: number) => `${(b / MB).toFixed(1)} MB`;

/**
 * Refuses a model that would not fit `budgetBytes` at its full (served) context, `cfg.seqLen`, naming each part of the
 * estimate and what to do about it. Infinity disables the check.
 */
export function checkMemoryBudget(name: string, cfg: ModelConfig, q: QuantSpec, budgetBytes: number): MemoryEstimate {
  if (!(budgetBytes > 0)) throw new EngineError(`memory budget ${budgetBytes} must be a positive number of bytes`, 'invalid_request', 'memoryBudget');
  const e = estimateMemory(cfg, q);
  if (e.total > budgetBytes) {
    const held = keepsQuantizedWeights(q.kernel) ? q.format : 'f32';
    throw new EngineError(
      `model "${name}" does not fit the memory budget: it needs ${mb(e.total)} at its full context of ${cfg.seqLen} tokens ` +
        `(weights ${mb(e.weights)} as ${quantLabel(q)}, held as ${held}; KV cache ${mb(e.kvCache)} as ${cfg.kvFormat ?? 'f32'}; Aux Cache ${mb(e.auxCache)}; ` +
        `runtime ${mb(e.runtime)}), but the isolate memory budget allows ${mb(budgetBytes)}. ` +
        'Rebuild the shards in a format that keeps weights quantized in memory (npm run shards -- --quant int4 --kernel nbits), ' +
        'hold the KV cache as f16 or int8 (KV_FORMAT, LAZY_EDGE_KV_FORMAT), use a shorter context, or raise the budget (LAZY_EDGE_MEMORY_BUDGET_MB, or loadModel\'s memoryBudgetBytes).',
      'model_too_large',
      'memoryBudget',
    );
  }
  return e;
}

/**
 * Width from which the weight GEMMs are big enough for MatMulInteger to win. Measured (npm run
 * quant-bench, docs/QUANTIZATION.md): at dim 64 (stories260K) every kernel prefills and decodes at
 * the same speed, within noise; at dim 288 and 768 MatMulInteger prefills 1.4-2x faster than f32.
 */
export const INTEGER_KERNEL_MIN_DIM = 256;

/**
 * The weight format `npm run shards` builds when none is given, by model size (docs/QUANTIZATION.md):
 * - small models (dim < 256): int8 dequantized at load. Nothing is faster there, it is the most
 *   faithful int8 (perplexity -0.02% vs f32 on stories260K, against +0.5% for the integer kernel)
 *   and the shards are 4x smaller; f32 weights in memory cost little at this size.
 * - larger models: int8 kept int8, MatMulInteger: faster prefill than f32, a quarter of the memory.
 * - int4 MatMulNBits only when nothing else fits: slow decode (it dequantizes on every run) and
 *   +19% perplexity on stories260K. When nothing fits at all, the smallest, so that loading says why.
 */
export function defaultQuant(cfg: ModelConfig, budgetBytes = DEFAULT_MEMORY_BUDGET_BYTES): QuantSpec {
  const candidates: QuantSpec[] = [
    ...(cfg.dim < INTEGER_KERNEL_MIN_DIM ? [{ format: 'int8', kernel: 'dequant' } as QuantSpec] : []),
    { format: 'int8', kernel: 'integer' },
    { format: 'int4', kernel: 'nbits', blockSize: 32 },
  ];
  return candidates.find((q) => estimateMemory(cfg, q).total <= budgetBytes) ?? candidates[candidates.length - 1];
}

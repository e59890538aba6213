/**
 * What one part of a split model needs in memory: its layers' weights and KV rows, an Aux Cache
 * that may hold every token (a token has one entry, in the part that runs the layer it stopped
 * at, so one part can hold them all), the runtime, and the embedding or classifier rows it holds.
 * Derived from memory-budget.ts's whole-model estimate, so both count the same bytes.
 */
import type { ModelConfig } from '../model/config.js';
import type { QuantSpec } from '../model/quant.js';
import { EngineError } from './errors.js';
import { estimateMemory, matrixBytes, MB, type MemoryEstimate } from './memory-budget.js';

/** Decoder layers [start, end). */
export interface LayerRange {
  start: number;
  end: number;
}

/** Which pieces of a model one part holds. */
export interface PartSpec {
  layers: LayerRange;
  embed: boolean;
  /** indices into manifest.files.head: the classifier's row parts held here */
  head: readonly number[];
  tokenizer: boolean;
}

/** Bytes of the pieces a part could hold, as the kernel holds them while running. */
export function pieceBytes(cfg: ModelConfig, q: QuantSpec): { layer: number; embed: number; headRow: number; finalNorm: number; kvPerTokenLayer: number } {
  const none = estimateMemory({ ...cfg, nLayers: 0 }, q);
  const one = estimateMemory({ ...cfg, nLayers: 1, seqLen: 1 }, q);
  const finalNorm = cfg.dim * 4;
  return {
    layer: one.weights - none.weights,
    embed: none.weights - matrixBytes(cfg.vocabSize, cfg.dim, q) - finalNorm,
    headRow: matrixBytes(1, cfg.dim, q),
    finalNorm,
    kvPerTokenLayer: one.kvCache,
  };
}

/** The estimate for `part` of a model whose config (served seqLen) is `cfg`; headRows = rows of each head part. */
export function estimatePartMemory(cfg: ModelConfig, q: QuantSpec, part: PartSpec, headRows: readonly number[]): MemoryEstimate {
  const p = pieceBytes(cfg, q);
  const nl = part.layers.end - part.layers.start;
  const rows = part.head.reduce((s, i) => s + headRows[i], 0);
  const weights = nl * p.layer + (part.embed ? p.embed : 0) + (part.head.length ? rows * p.headRow + p.finalNorm : 0);
  const full = estimateMemory(cfg, q);
  const kvCache = nl * cfg.seqLen * p.kvPerTokenLayer;
  const auxCache = nl > 0 ? full.auxCache : 0;
  return { weights, kvCache, auxCache, runtime: full.runtime, total: weights + kvCache + auxCache + full.runtime };
}

const mb = (b: number) => `${(b / MB).toFixed(1)} MB`;

/** Refuses a part that would not fit `budgetBytes` at the served context, naming each part of the estimate. */
export function checkPartBudget(name: string, cfg: ModelConfig, q: QuantSpec, part: PartSpec, headRows: readonly number[], budgetBytes: number): MemoryEstimate {
  if (!(budgetBytes > 0)) throw new EngineError(`memory budget ${budgetBytes} must be a positive number of bytes`, 'invalid_request', 'memoryBudget');
  const e = estimatePartMemory(cfg, q, part, headRows);
  if (e.total > budgetBytes) {
    const { start, end } = part.layers;
    throw new EngineError(
      `layers ${start}..${end - 1}${part.embed ? ' with the embedding' : ''}${part.head.length ? ` with ${part.head.length} classifier part(s)` : ''} of model "${name}" ` +
        `do not fit the memory budget: they need ${mb(e.total)} at a context of ${cfg.seqLen} tokens (weights ${mb(e.weights)}; KV cache ${mb(e.kvCache)}; ` +
        `Aux Cache ${mb(e.auxCache)}; runtime ${mb(e.runtime)}), but the isolate memory budget allows ${mb(budgetBytes)}. Split the layers into more groups.`,
      'model_too_large',
      'memoryBudget',
    );
  }
  return e;
}

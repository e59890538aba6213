/**
 * What one part of a split model needs in memory: its layers' weights and KV rows, an Aux Cache
 * that may hold every token (a token has one entry, in the part that runs the layer it stopped
 * at, so one part can hold them all), the runtime, and the embedding or classifier rows it holds.
 * Built from the same pieces as memory-budget.ts's whole-model estimate, so both count the same bytes.
 */
import type { ModelConfig } from '../model/config.js';
import type { QuantSpec } from '../model/quant.js';
import { EngineError } from './errors.js';
import { MB, partsText, pieceBytes, RUNTIME_OVERHEAD_BYTES, totalOf, type MemoryEstimate } from './memory-budget.js';

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

/** Bytes of the pieces a part could hold, as the kernel holds them while running (memory-budget.ts). */
export { pieceBytes };

/**
 * The estimate for `part` of a model whose config (served seqLen) is `cfg`; headRows = rows of each head part.
 * Every part pays the runtime; the attention temporaries come with layers, the classifier's with its rows,
 * and the copies with its largest piece (memory-budget.ts MEASURED).
 */
export function estimatePartMemory(cfg: ModelConfig, q: QuantSpec, part: PartSpec, headRows: readonly number[]): MemoryEstimate {
  const p = pieceBytes(cfg, q);
  const nl = part.layers.end - part.layers.start;
  const rows = part.head.reduce((s, i) => s + headRows[i], 0);
  const largestHeadPart = Math.max(0, ...part.head.map((i) => headRows[i]));
  const embedPart = part.embed ? Math.max(0, ...headRows) : 0; // the embedding's row parts are cut like the classifier's
  const e = {
    weights: nl * p.layer + (part.embed ? p.embed : 0) + (part.head.length ? rows * p.headRow + p.finalNorm : 0),
    weightCopies: Math.round(Math.max(nl > 0 ? p.layerCopies : 0, embedPart * p.embedRowCopies, largestHeadPart * p.headRowCopies)),
    kvCache: nl * cfg.seqLen * p.kvPerTokenLayer,
    // A token's Aux Cache entry is in one part, but any part may end up with all of them.
    auxCache: nl > 0 ? cfg.seqLen * p.auxPerToken : 0,
    activations: largestHeadPart * p.headRowDecoded + (nl > 0 ? cfg.seqLen * p.attnTempPerToken : 0),
    tokenizer: part.tokenizer ? p.tokenizer : 0,
    runtime: RUNTIME_OVERHEAD_BYTES,
  };
  return { ...e, total: totalOf(e) };
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
        `do not fit the memory budget: they need ${mb(e.total)} at a context of ${cfg.seqLen} tokens (${partsText(e)}), ` +
        `but the isolate memory budget allows ${mb(budgetBytes)}. Split the layers into more groups, put the classifier in objects of its own, ` +
        'hold the KV cache as f16 or int8 (KV_FORMAT), or use a shorter context.',
      'model_too_large',
      'memoryBudget',
    );
  }
  return e;
}

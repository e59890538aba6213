/**
 * What one part of a split model needs in memory: its layers' weights and KV rows, an Aux Cache
 * that may hold every token (a token has one entry, in the part that runs the layer it stopped
 * at, so one part can hold them all), the runtime, and the embedding or classifier rows it holds.
 * Built from the same pieces as memory-budget.ts's whole-model estimate, so both count the same bytes.
 */
import type { ModelConfig } from '../model/config.js';
import type { QuantSpec } from '../model/quant.js';
import { EngineError } from './errors.js';
import { estimateHeld, MB, partsText, type MemoryEstimate } from './memory-budget.js';

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

/**
 * The estimate for `part` of a model whose config (served seqLen) is `cfg`; headRows = rows of each head part.
 * A part with a session pays the runtime; the attention temporaries come with layers, the classifier's with
 * its rows, and the copies with its largest piece (memory-budget.ts estimateHeld).
 */
export function estimatePartMemory(
  cfg: ModelConfig,
  q: QuantSpec,
  part: PartSpec,
  headRows: readonly number[],
): MemoryEstimate {
  return estimateHeld(cfg, q, {
    layers: part.layers.end - part.layers.start,
    embed: part.embed,
    headRows: part.head.map((i) => headRows[i]),
    tokenizer: part.tokenizer,
  });
}

const mb = (b: number) => `${(b / MB).toFixed(1)} MB`;

/** Refuses a part that would not fit `budgetBytes` at the served context, naming each part of the estimate. */
export function checkPartBudget(
  name: string,
  cfg: ModelConfig,
  q: QuantSpec,
  part: PartSpec,
  headRows: readonly number[],
  budgetBytes: number,
): MemoryEstimate {
  if (!(budgetBytes > 0))
    throw new EngineError(
      `memory budget ${budgetBytes} must be a positive number of bytes`,
      'invalid_request',
      'memoryBudget',
    );
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

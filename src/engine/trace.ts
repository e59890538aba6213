/**
 * A compact record of what LazyLLM computed in one generation, for clients that want to draw it
 * (the playground's pruning grid). Built only from step.ts's per-layer `LayerTrace` hook, so
 * recording changes nothing in how a step runs.
 *
 * Why a depth per token is enough for the prefill: within one step the active sets are nested
 * (each pruning layer keeps a subset of the previous set), and a token is a query at layer l
 * exactly when it is active there and has depth l. So a token's layers computed in one step are
 * the contiguous range [depth before the step, depth after it): two small integers per token
 * describe every layer's active set at prefill, instead of a list of positions per layer.
 */
import type { SequenceState } from './caches.js';
import type { LoadedModel } from './model.js';
import type { LayerTrace } from './step.js';
import type { TokenSpan } from './policy.js';

/** Most revival entries a trace carries; further ones are only counted (`revivals_dropped`). */
export const MAX_TRACE_REVIVALS = 2048;

/** One revival: [decode step (1 = first decode step), position, first layer computed, last layer computed + 1]. */
export type TraceRevival = [step: number, position: number, from: number, to: number];

/** `lazy_stats.trace`; snake_case because it travels as JSON (docs/HTTP-API.md, "Extensions", documents it). */
export interface LazyTrace {
  /** decoder layers: the grid's rows */
  layers: number;
  /** positions 0..tokens-1: the prompt as the model saw it (in a session, the whole conversation so far) */
  tokens: number;
  /** each position's text; a token that only opens a multi-byte character, or a control token the tokenizer hides, is "" */
  pieces: string[];
  /** positions below this were computed in earlier turns of a session (always 0 without a session) */
  reused: number;
  /** for each position below `reused`: the layers it had reached before this request */
  depth_before: number[];
  /**
   * for each position: the layers it had reached at the end of prefill. The prefill computed
   * position i at layer l iff before_i <= l < prefill_depth[i], with before_i = depth_before[i]
   * below `reused` and 0 after; a position with prefill_depth < layers was pruned at that layer.
   */
  prefill_depth: number[];
  /** [from, to) positions of the prompt's question (what signal:query ranks by); null when it has none */
  question: [number, number] | null;
  /** tokens resumed from the Aux Cache by decode steps, in order (at most MAX_TRACE_REVIVALS) */
  revivals: TraceRevival[];
  revivals_dropped: number;
}

const digits = (n: number) => String(Math.max(0, Math.floor(n))).length;

/**
 * Upper bound, in bytes of JSON, of a trace with `tokens` positions over `layers` layers whose
 * decode steps and positions stay below `maxPosition` (the context size), given the JSON size of
 * its `pieces` (about the prompt's text, plus quotes and commas). Each depth is at most
 * digits(layers) characters plus a comma; each revival at most two positions, two layers and six
 * brackets/commas; the keys, counters and question span fit in 240 bytes.
 */
export function traceSizeBound(tokens: number, layers: number, maxPosition: number, piecesJsonBytes: number): number {
  const depth = digits(layers) + 1;
  const revival = 2 * digits(maxPosition) + 2 * digits(layers) + 6;
  return 240 + 2 * tokens * depth + MAX_TRACE_REVIVALS * revival + piecesJsonBytes;
}

/**
 * Records one generation on `seq` (fresh, or a session's state with earlier turns). Pass `hook`
 * as the generation's `trace` option; `result()` afterwards. Layer 0 runs at every step, so its
 * call marks the start of a step: the first is the prefill, the rest decode steps.
 */
export class TraceRecorder {
  private step = -1;
  private n = 0;
  private before = new Uint8Array(0);
  private after = new Uint8Array(0);
  private readonly revivals: TraceRevival[] = [];
  private dropped = 0;
  /** this decode step's revivals by position, extended while the token is carried deeper */
  private open = new Map<number, TraceRevival>();

  constructor(
    private readonly model: LoadedModel,
    private readonly seq: SequenceState,
    /** the prompt's question, if it has one */
    private readonly question: TokenSpan | null = null,
    /** each token's depth before this generation when `seq` holds no depths (a split model's groups do) */
    private readonly depthBefore?: Uint8Array,
  ) {}

  readonly hook: LayerTrace = (layer, queries, revived) => {
    if (layer === 0) {
      this.step++;
      this.open.clear();
      // The hook runs before a layer updates depths: at layer 0 of the prefill, seq.depth is
      // still every position's depth before this request (0 for the new prompt tokens).
      if (this.step === 0) {
        this.n = this.seq.length;
        this.before = new Uint8Array(this.n);
        this.before.set((this.depthBefore ?? this.seq.depth).subarray(0, this.n));
        this.after = this.before.slice();
      }
    }
    if (this.step === 0) {
      for (const i of queries) this.after[i] = layer + 1;
      return;
    }
    for (const i of revived) {
      if (this.revivals.length >= MAX_TRACE_REVIVALS) {
        this.dropped++;
        continue;
      }
      const e: TraceRevival = [this.step, i, layer, layer + 1];
      this.revivals.push(e);
      this.open.set(i, e);
    }
    for (const i of queries) {
      const e = this.open.get(i);
      if (e) e[3] = layer + 1;
    }
  };

  result(): LazyTrace {
    // Layer 0 computes every token it is given, so positions held from earlier turns have depth >= 1
    // and the new ones start at 0: the reused positions are the prefix before the first 0.
    let reused = this.before.indexOf(0);
    if (reused < 0) reused = this.n;
    const decoder = this.model.tokenizer.createDecoder();
    const pieces = this.seq.tokens.slice(0, this.n).map((t) => decoder.push(t));
    return {
      layers: this.model.config.nLayers,
      tokens: this.n,
      pieces,
      reused,
      depth_before: Array.from(this.before.subarray(0, reused)),
      prefill_depth: Array.from(this.after),
      question: this.question ? [this.question.from, this.question.to] : null,
      revivals: this.revivals,
      revivals_dropped: this.dropped,
    };
  }
}

import { LAYER_IO } from '../model/shard-io.js';
import type { ModelConfig } from '../model/config.js';
import { SequenceState } from './caches.js';
import { EngineError } from './errors.js';
import type { LoadedModel } from './model.js';
import { keepAt, limitRevivals, selectActive, type Schedule } from './policy.js';
import { embedTokens, headLogits } from './vocab-parts.js';

export interface StepStats {
  newTokens: number;
  /** query rows each layer ran: what LazyLLM saves is visible here */
  computedPerLayer: number[];
  /** tokens resumed from the Aux Cache, per layer */
  revivedPerLayer: number[];
  /** size of the active set at each layer */
  activePerLayer: number[];
  revived: number;
  auxEntries: number;
  kvEntries: number;
  flops: number;
  /** what the same step would cost with nothing pruned and nothing cached beyond the KV cache */
  denseFlops: number;
  ms: number;
}

/** Observes each layer's queries; tests use it to count how often a token is computed per layer. */
export type LayerTrace = (layer: number, queries: Int32Array, revived: Int32Array) => void;

export interface StepOptions {
  /** null runs dense: every token is carried to the last layer. */
  schedule: Schedule | null;
  trace?: LayerTrace;
}

/** Matmul FLOPs of one layer for q query rows attending to t keys (2 per multiply-add). */
export function layerFlops(cfg: ModelConfig, q: number, t: number): number {
  const proj = cfg.dim * (cfg.dim + 2 * cfg.kvDim) + cfg.dim * cfg.dim + 3 * cfg.dim * cfg.hiddenDim;
  return 2 * q * proj + 2 * 2 * q * t * cfg.dim;
}

/**
 * Query rows per layer run when a layer has many queries (long prefills). Queries are in ascending
 * position, so chunk j needs as keys only the context and chunks 0..j-1 (later chunks are all
 * masked for it): the causally masked part of the score matrix is mostly never computed, and the
 * score buffer is chunk x keys instead of q x keys. Results equal the unchunked run.
 */
export const PREFILL_CHUNK = 128;

function concatIdx(a: Int32Array, b: Int32Array): Int32Array {
  const out = new Int32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Runs layer l for `queries` (hidden states x [q, dim]) against the cached K/V of `context`, in
 * chunks of about PREFILL_CHUNK queries; writes the queries' K/V rows into the cache. Returns the
 * new hidden states [q, dim] and the last query's attention over [context..., queries...].
 */
async function runLayer(
  model: LoadedModel,
  seq: SequenceState,
  l: number,
  x: Float32Array,
  queries: Int32Array,
  context: Int32Array,
): Promise<{ y: Float32Array; attn: Float32Array }> {
  const { dim, kvDim } = model.config;
  const q = queries.length;
  const chunks = Math.max(1, Math.round(q / PREFILL_CHUNK));
  let y: Float32Array = new Float32Array(0);
  let attn: Float32Array = new Float32Array(0);
  for (let c = 0; c < chunks; c++) {
    const a = Math.floor((c * q) / chunks);
    const b = Math.floor(((c + 1) * q) / chunks);
    const keysBefore = a === 0 ? context : concatIdx(context, queries.subarray(0, a));
    const past = seq.kv.gather(l, keysBefore);
    const out = await model.layers[l].run({
      [LAYER_IO.inputs.x]: { data: x.subarray(a * dim, b * dim), dims: [b - a, dim] },
      [LAYER_IO.inputs.pos]: { data: Float32Array.from(queries.subarray(a, b)), dims: [b - a] },
      [LAYER_IO.inputs.pastK]: { data: past.k, dims: [keysBefore.length, kvDim] },
      [LAYER_IO.inputs.pastV]: { data: past.v, dims: [keysBefore.length, kvDim] },
      [LAYER_IO.inputs.pastPos]: { data: Float32Array.from(keysBefore), dims: [keysBefore.length] },
    });
    const yc = out[LAYER_IO.outputs.y].data as Float32Array;
    if (chunks === 1) y = yc;
    else {
      if (c === 0) y = new Float32Array(q * dim);
      y.set(yc, a * dim);
    }
    seq.kv.write(l, queries.subarray(a, b), out[LAYER_IO.outputs.k].data as Float32Array, out[LAYER_IO.outputs.v].data as Float32Array);
    attn = out[LAYER_IO.outputs.attnLast].data as Float32Array; // the last chunk's is the last query's
  }
  return { y, attn };
}

function range(a: number, b: number): Int32Array {
  const r = new Int32Array(b - a);
  for (let i = 0; i < r.length; i++) r[i] = a + i;
  return r;
}

/**
 * One generation step: appends `newTokens` to the sequence and runs them through the model with
 * LazyLLM's progressive pruning, returning the logits of the last token. Queries at layer l are the
 * active tokens whose depth is l: new tokens, tokens carried from layer l-1, and tokens revived
 * from the Aux Cache. Tokens already deeper take part through their cached K/V only.
 */
export async function runStep(
  model: LoadedModel,
  seq: SequenceState,
  newTokens: readonly number[],
  opts: StepOptions,
): Promise<{ logits: Float32Array; stats: StepStats }> {
  const t0 = performance.now();
  const cfg = model.config;
  const { dim, kvDim, nLayers } = cfg;
  if (newTokens.length === 0) throw new EngineError('a step needs at least one new token', 'invalid_request');
  const start = seq.length;
  seq.append(newTokens);
  const n = seq.length;
  const last = n - 1;

  const embedded = await embedTokens(model.embed, newTokens, dim); // [newTokens, dim]

  // Hidden states carried from the previous layer within this step: token -> [dim] row.
  let carried = new Map<number, Float32Array>();
  for (let j = 0; j < newTokens.length; j++) carried.set(start + j, embedded.subarray(j * dim, (j + 1) * dim));

  const stats: StepStats = {
    newTokens: newTokens.length,
    computedPerLayer: [],
    revivedPerLayer: [],
    activePerLayer: [],
    revived: 0,
    auxEntries: 0,
    kvEntries: 0,
    flops: 0,
    denseFlops: 0,
    ms: 0,
  };

  let active = range(0, n); // A_0: every token
  let scores: Float32Array | null = null; // s^{l-1}, aligned with `active`
  for (let l = 0; l < nLayers; l++) {
    const keep = opts.schedule ? keepAt(opts.schedule, l) : null;
    if (keep !== null && scores) {
      let next = selectActive(active, scores, keep, opts.schedule!.keepFirst, opts.schedule!.minActive);
      const budget = opts.schedule!.reviveBudget;
      if (budget !== undefined) {
        const at = new Map<number, number>();
        active.forEach((i, j) => at.set(i, scores![j]));
        next = limitRevivals(next, (i) => seq.depth[i] === l && !carried.has(i), (i) => at.get(i)!, budget);
      }
      // Tokens leaving the active set park their current hidden state in the Aux Cache.
      if (next.length !== active.length) {
        const kept = new Set(next);
        for (const i of active) {
          const h = carried.get(i);
          if (h && !kept.has(i)) {
            seq.park(i, h.slice());
            carried.delete(i);
          }
        }
      }
      active = next;
    }

    // Split `active` (ascending) into queries (depth l) and context (deeper); both stay ascending.
    const m = active.length;
    const queryBuf = new Int32Array(m);
    const contextBuf = new Int32Array(m);
    const revived: number[] = [];
    let q = 0;
    let c = 0;
    for (let j = 0; j < m; j++) {
      const i = active[j];
      const d = seq.depth[i];
      if (d === l) {
        queryBuf[q++] = i;
        if (!carried.has(i)) revived.push(i);
      } else if (d > l) contextBuf[c++] = i;
      else throw new EngineError(`token ${i} at depth ${d} is active at layer ${l}`, 'internal');
    }
    const queries = queryBuf.subarray(0, q);
    const context = contextBuf.subarray(0, c);
    const x = new Float32Array(q * dim); // [q, dim]
    for (let j = 0; j < q; j++) {
      const i = queries[j];
      let h = carried.get(i);
      if (!h) {
        h = seq.resume(i);
        if (!h) throw new EngineError(`token ${i} must resume at layer ${l} but has no Aux Cache entry`, 'internal');
      }
      x.set(h, j * dim);
    }
    opts.trace?.(l, queries.slice(), Int32Array.from(revived));

    const { y, attn } = await runLayer(model, seq, l, x, queries, context);
    for (const i of queries) seq.deepen(i, l + 1);

    // attn_last is over keys [context..., queries...]; realign it with `active` by merging the two
    // ascending lists. Only a later pruning layer reads the scores.
    if (opts.schedule?.prune.some((p) => p.layer > l)) {
      const sc = new Float32Array(m);
      for (let j = 0, cj = 0, qj = 0; j < m; j++) sc[j] = cj < c && context[cj] === active[j] ? attn[cj++] : attn[c + qj++];
      scores = sc;
    } else scores = null;

    carried = new Map();
    for (let j = 0; j < q; j++) carried.set(queries[j], y.subarray(j * dim, (j + 1) * dim));

    stats.computedPerLayer.push(q);
    stats.revivedPerLayer.push(revived.length);
    stats.activePerLayer.push(active.length);
    stats.revived += revived.length;
    stats.flops += layerFlops(cfg, q, active.length);
    stats.denseFlops += layerFlops(cfg, newTokens.length, n);
  }

  const hLast = carried.get(last);
  if (!hLast) throw new EngineError('the last token did not reach the final layer', 'internal');
  const logits = await headLogits(model.head, hLast, dim, cfg.vocabSize);
  stats.flops += 2 * dim * cfg.vocabSize;
  stats.denseFlops += 2 * dim * cfg.vocabSize;
  stats.auxEntries = seq.aux.size;
  stats.kvEntries = seq.kvEntries();
  stats.ms = performance.now() - t0;
  return { logits, stats };
}

import { LAYER_IO } from '../model/shard-io.js';
import type { ModelConfig } from '../model/config.js';
import { SequenceState } from './caches.js';
import { EngineError } from './errors.js';
import type { ModelPart } from './model.js';
import {
  importance,
  keepAt,
  keepsFirst,
  limitRevivals,
  rankingFor,
  selectActive,
  type Ranking,
  type Schedule,
} from './policy.js';
import { headLogits } from './vocab-parts.js';
import type { RawRows } from './kv-rows.js';
import type { HostTensor } from '../runtime/onnx-runtime.js';

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

/** What a run over some of the layers adds to a step's statistics (per-layer arrays cover its layers only). */
export type LayerStats = Omit<StepStats, 'newTokens' | 'ms'>;

/** Observes each layer's queries; tests use it to count how often a token is computed per layer. */
export type LayerTrace = (layer: number, queries: Int32Array, revived: Int32Array) => void;

export interface StepOptions {
  /** null runs dense: every token is carried to the last layer. */
  schedule: Schedule | null;
  trace?: LayerTrace;
  /**
   * Awaited after each layer (and, split, after each call to a group: src/worker/groups/chain.ts):
   * a host whose client sees nothing during a long prefill keeps its connection alive here.
   */
  progress?: () => void | Promise<void>;
  /** what ranks this step's tokens (default: its last token's row, the paper's); generate() sets it from the schedule's signal */
  ranking?: Ranking;
}

/**
 * Everything one step carries from layer `layer - 1` into layer `layer`: all a run over layers
 * [layer, b) needs besides its own caches, and what crosses the boundary between two layer groups
 * (src/engine/layer-group.ts). Pruning at `layer` is decided by whoever runs `layer`, from `scores`.
 */
export interface Frontier {
  /** the layer this enters; 0 for embedded tokens, nLayers for the head */
  layer: number;
  /** the sequence length before this step: the new tokens are indices start..start+newTokens.length-1 */
  start: number;
  /** [k] this step's new token ids: every layer group appends them to its own state */
  newTokens: number[];
  /** [m] ascending token indices: the active set that left layer - 1 (at layer 0, every token) */
  active: Int32Array;
  /** [m] s^{layer-1}, the signal's importance of each active token after layer - 1, aligned with `active`; null when `layer` does not prune */
  scores: Float32Array | null;
  /** what ranks the tokens in this step: every group ranks by the same rows and keeps the same tokens */
  ranking: Ranking;
  /** [q] ascending: the tokens computed at layer - 1 in this step (at layer 0, the new tokens) */
  carried: Int32Array;
  /** [q, dim] their hidden states, entering `layer` */
  hidden: Float32Array;
}

/** Matmul FLOPs of one layer for q query rows attending to t keys (2 per multiply-add). */
export function layerFlops(cfg: ModelConfig, q: number, t: number): number {
  const proj = cfg.dim * (cfg.dim + 2 * cfg.kvDim) + cfg.dim * cfg.dim + 3 * cfg.dim * cfg.hiddenDim;
  return 2 * q * proj + 2 * 2 * q * t * cfg.dim;
}

/**
 * What a step of `newTokens` after `held` tokens is expected to cost under `schedule`, in FLOPs,
 * before it runs: each layer computes the new tokens that are still active there, the share the
 * schedule keeps (never fewer than its floor), against every token as keys. An estimate for
 * planning (the request budget), not an account: the signal's protected rows are not counted.
 */
export function expectedStepFlops(
  cfg: ModelConfig,
  schedule: Schedule | null,
  held: number,
  newTokens: number,
): number {
  const t = held + newTokens;
  let active = t;
  let flops = headFlops(cfg);
  for (let l = 0; l < cfg.nLayers; l++) {
    const keep = schedule ? keepAt(schedule, l) : null;
    if (keep !== null) active = Math.min(active, Math.max(schedule!.minActive ?? 1, Math.ceil(keep * active)));
    flops += layerFlops(cfg, Math.min(newTokens, active), t);
  }
  return flops;
}

/**
 * Query rows per layer run when a layer has many queries (long prefills). Queries are in ascending
 * position, so chunk j needs as keys only the context and chunks 0..j-1 (later chunks are all
 * masked for it): the causally masked part of the score matrix is mostly never computed, and the
 * score buffer is chunk x keys instead of q x keys. Results equal the unchunked run.
 */
export const PREFILL_CHUNK = 128;

/**
 * The most bytes one attention score tensor ([heads, chunk rows, keys] f32) of a prefill chunk may
 * take: long contexts get shorter chunks. The runtime holds a few such tensors at once, and its
 * heap never shrinks, so without a bound the wasm memory grows with the context (measured: +88 MB
 * at 4096 tokens with 128-row chunks, npm run memory) long after the weights are in. At 2048
 * tokens and SmolLM2's 9 heads this is 113 rows, near PREFILL_CHUNK; at 8192, 28.
 */
export const ATTN_SCORE_BYTES = 8 * 1024 * 1024;
/** Chunks never go below this many rows: each run reads all of a layer's weights once. */
const MIN_CHUNK_ROWS = 16;

/** How many equal chunks `q` query rows over at most `keys` keys run in (see ATTN_SCORE_BYTES). */
export function prefillChunks(q: number, keys: number, nHeads: number): number {
  const rowsCap = Math.max(MIN_CHUNK_ROWS, Math.floor(ATTN_SCORE_BYTES / (nHeads * keys * 4)));
  return Math.max(1, Math.round(q / PREFILL_CHUNK), Math.ceil(q / rowsCap));
}

const NONE = { f32: new Float32Array(0), f16: new Uint16Array(0), i8: new Int8Array(0) };

/** The past K/V inputs of a layer graph for n rows held in `k.format`: those rows in its inputs, the other forms empty. */
function pastFeeds(k: RawRows, v: RawRows, n: number, kvDim: number): Record<string, HostTensor> {
  const io = LAYER_IO.inputs;
  const rows = (f: RawRows['format']) => [f === k.format ? n : 0, kvDim];
  return {
    [io.pastK]: { data: k.format === 'f32' ? k.data : NONE.f32, dims: rows('f32') },
    [io.pastV]: { data: v.format === 'f32' ? v.data : NONE.f32, dims: rows('f32') },
    [io.pastKF16]: { data: k.format === 'f16' ? k.data : NONE.f16, dims: rows('f16') },
    [io.pastVF16]: { data: v.format === 'f16' ? v.data : NONE.f16, dims: rows('f16') },
    [io.pastKI8]: { data: k.format === 'int8' ? k.data : NONE.i8, dims: rows('int8') },
    [io.pastVI8]: { data: v.format === 'int8' ? v.data : NONE.i8, dims: rows('int8') },
    [io.pastKI8Scale]: { data: k.format === 'int8' ? k.scales : NONE.f32, dims: [rows('int8')[0], 1] },
    [io.pastVI8Scale]: { data: v.format === 'int8' ? v.scales : NONE.f32, dims: [rows('int8')[0], 1] },
  };
}

/**
 * The position given to a cached key the step does not attend to: beyond every query's, so the
 * graph's causal mask (key position <= query position) hides it and its weight is exactly 0.
 */
export const MASKED_POS = 2 ** 30;

/**
 * Runs layer l for `queries` (hidden states x [q, dim]) against the cached K/V of `context`, in
 * chunks of about PREFILL_CHUNK queries; writes the queries' K/V rows into the cache, whose layer
 * l is its row `l - range.start`. The keys are every row the layer holds (a view, in the order
 * computed, see KVCache), those of tokens outside `context` masked by position, followed by the
 * queries. Returns the new hidden states [q, dim], the attention of the queries [rowFrom, rowTo)
 * per head, mean over those rows, over [the layer's `past` rows before this step..., queries...]
 * ([heads, past + q]; all zeros for an empty span), and `past`. The rows may span chunks: each
 * chunk's share is weighted by its rows (keys after a chunk are masked for it, so they get nothing
 * from it).
 */
async function runLayer(
  part: ModelPart,
  seq: SequenceState,
  l: number,
  x: Float32Array,
  queries: Int32Array,
  context: Int32Array,
  rowFrom: number,
  rowTo: number,
): Promise<{ y: Float32Array; attn: Float32Array; past: number }> {
  const { dim, kvDim, nHeads } = part.config;
  const lk = l - part.layerRange.start;
  const q = queries.length;
  const held = seq.kv.layerRows(lk).tokens; // [past]
  const past = held.length;
  if (past < context.length)
    throw new EngineError(`layer ${l} holds ${past} rows for a context of ${context.length}`, 'internal');
  // [past + q] the rows' positions, masked outside the context, then the queries' (chunk j sees chunks < j as keys)
  const keyPos = new Float32Array(past + q);
  if (context.length === past) for (let s = 0; s < past; s++) keyPos[s] = held[s];
  else {
    keyPos.fill(MASKED_POS, 0, past);
    for (let j = 0; j < context.length; j++) keyPos[seq.kv.rowIndex(lk, context[j])] = context[j];
  }
  for (let j = 0; j < q; j++) keyPos[past + j] = queries[j];
  const chunks = prefillChunks(q, past + q, nHeads);
  const t = past + q;
  let y: Float32Array = new Float32Array(0);
  const attn = new Float32Array(nHeads * t); // [heads, t]
  for (let c = 0; c < chunks; c++) {
    const a = Math.floor((c * q) / chunks);
    const b = Math.floor(((c + 1) * q) / chunks);
    const rows = seq.kv.layerRows(lk); // the earlier chunks' rows were appended after the past ones
    if (rows.tokens.length !== past + a)
      throw new EngineError(`layer ${l} holds ${rows.tokens.length} rows, expected ${past + a}`, 'internal');
    const r0 = Math.max(rowFrom, a);
    const r1 = Math.min(rowTo, b);
    const out = await part.layers[lk].run({
      [LAYER_IO.inputs.x]: { data: x.subarray(a * dim, b * dim), dims: [b - a, dim] },
      [LAYER_IO.inputs.pos]: { data: keyPos.slice(past + a, past + b), dims: [b - a] },
      ...pastFeeds(rows.k, rows.v, past + a, kvDim),
      // A chunk without signal rows still names one row: its output is not read.
      [LAYER_IO.inputs.attnRows]: {
        data: r1 > r0 ? BigInt64Array.of(BigInt(r0 - a), BigInt(r1 - a)) : BigInt64Array.of(0n, 1n),
        dims: [2],
      },
      [LAYER_IO.inputs.pastPos]: { data: keyPos.subarray(0, past + a), dims: [past + a] },
    });
    const yc = out[LAYER_IO.outputs.y].data as Float32Array;
    if (chunks === 1) y = yc;
    else {
      if (c === 0) y = new Float32Array(q * dim);
      y.set(yc, a * dim);
    }
    seq.kv.write(
      lk,
      queries.subarray(a, b),
      out[LAYER_IO.outputs.k].data as Float32Array,
      out[LAYER_IO.outputs.v].data as Float32Array,
    );
    if (r1 > r0) {
      const chunkAttn = out[LAYER_IO.outputs.attn].data as Float32Array; // [heads, past + b]
      const w = (r1 - r0) / (rowTo - rowFrom);
      const tc = past + b;
      for (let h = 0; h < nHeads; h++)
        for (let key = 0; key < tc; key++) attn[h * t + key] += w * chunkAttn[h * tc + key];
    }
  }
  return { y, attn, past };
}

/** The first j with sorted[j] >= x (sorted.length if none). */
function lowerBound(sorted: Int32Array, x: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function range(a: number, b: number): Int32Array {
  const r = new Int32Array(b - a);
  for (let i = 0; i < r.length; i++) r[i] = a + i;
  return r;
}

/** The frontier entering layer 0: the new tokens (appended after `start` tokens) embedded, every token active. */
export async function embedStep(
  part: Pick<ModelPart, 'config' | 'embed'>,
  start: number,
  newTokens: readonly number[],
  ranking?: Ranking,
): Promise<Frontier> {
  if (newTokens.length === 0) throw new EngineError('a step needs at least one new token', 'invalid_request');
  if (!part.embed) throw new EngineError('this model part holds no embedding', 'internal');
  const hidden = part.embed.lookup(newTokens); // [newTokens, dim]
  const n = start + newTokens.length;
  return {
    layer: 0,
    start,
    newTokens: [...newTokens],
    active: range(0, n),
    scores: null,
    ranking: ranking ?? rankingFor(undefined, start, newTokens.length, null, null),
    carried: range(start, n),
    hidden,
  };
}

/**
 * Runs one step over the part's layers [a, b) = part.layerRange, from the frontier entering a to
 * the one leaving b - 1, with LazyLLM's progressive pruning. `seq` holds this part's layers only
 * (its layer k is layer a + k, and its depths count this part's layers: a token's depth here is
 * its model depth minus a, clamped to [0, b - a]); the step's new tokens are appended to it first.
 * Queries at layer l are the active tokens whose depth is l: new tokens, tokens carried from layer
 * l-1, and tokens revived from this part's Aux Cache. Tokens already deeper take part through
 * their cached K/V only. A token pruned at layer l parks the hidden state entering l here, in the
 * part that runs l, which is where it resumes.
 */
export async function runLayers(
  part: ModelPart,
  seq: SequenceState,
  into: Frontier,
  opts: StepOptions,
): Promise<{ frontier: Frontier; stats: LayerStats }> {
  const cfg = part.config;
  const { dim } = cfg;
  const { start: a, end: b } = part.layerRange;
  if (into.layer !== a)
    throw new EngineError(`layers ${a}..${b - 1} were handed the frontier entering layer ${into.layer}`, 'internal');
  if (seq.kv.nLayers !== b - a)
    throw new EngineError(`a state of ${seq.kv.nLayers} layers cannot run layers ${a}..${b - 1}`, 'internal');
  if (seq.length !== into.start)
    throw new EngineError(`the state holds ${seq.length} tokens, the step starts at ${into.start}`, 'internal');
  seq.append(into.newTokens);
  const n = seq.length;
  const { ranking } = into;
  const { from: rowFrom, to: rowTo } = ranking;
  if (!(into.start <= rowFrom && rowFrom < rowTo && rowTo <= n))
    throw new EngineError(
      `ranking rows ${rowFrom}..${rowTo - 1} are not among the step's new tokens ${into.start}..${n - 1}`,
      'internal',
    );
  if (ranking.fresh) seq.rankMemo.clear();

  // Hidden states carried from the previous layer within this step: token -> [dim] row.
  let carried = new Map<number, Float32Array>();
  for (let j = 0; j < into.carried.length; j++)
    carried.set(into.carried[j], into.hidden.subarray(j * dim, (j + 1) * dim));

  const stats: LayerStats = {
    computedPerLayer: [],
    revivedPerLayer: [],
    activePerLayer: [],
    revived: 0,
    auxEntries: 0,
    kvEntries: 0,
    flops: 0,
    denseFlops: 0,
  };

  let active = into.active; // A_{l-1}
  let scores = into.scores; // s^{l-1}, aligned with `active`
  let out: { queries: Int32Array; y: Float32Array } = { queries: into.carried, y: into.hidden };
  for (let l = a; l < b; l++) {
    const lk = l - a; // this part's layer index, and the depth of a token that is a query at l
    const keep = opts.schedule ? keepAt(opts.schedule, l) : null;
    if (keep !== null && scores) {
      let next = selectActive(
        active,
        scores,
        keep,
        keepsFirst(opts.schedule!),
        opts.schedule!.minActive,
        ranking.keepFrom,
      );
      const budget = opts.schedule!.reviveBudget;
      if (budget !== undefined) {
        const at = new Map<number, number>();
        active.forEach((i, j) => at.set(i, scores![j]));
        next = limitRevivals(
          next,
          (i) => seq.depth[i] === lk && !carried.has(i),
          (i) => at.get(i)!,
          budget,
        );
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
    // Every token entering a part is at least as deep as the part's first layer, so depth 0 here is depth a.
    const m = active.length;
    const queryBuf = new Int32Array(m);
    const contextBuf = new Int32Array(m);
    const revived: number[] = [];
    let q = 0;
    let c = 0;
    for (let j = 0; j < m; j++) {
      const i = active[j];
      const d = seq.depth[i];
      if (d === lk) {
        queryBuf[q++] = i;
        if (!carried.has(i)) revived.push(i);
      } else if (d > lk) contextBuf[c++] = i;
      else throw new EngineError(`token ${i} at depth ${a + d} is active at layer ${l}`, 'internal');
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

    // The signal's rows among the queries: they are kept, so every one of them is a query here.
    const j0 = lowerBound(queries, rowFrom);
    const j1 = lowerBound(queries, rowTo);
    if (j1 - j0 !== rowTo - rowFrom)
      throw new EngineError(`layer ${l} computes ${j1 - j0} of the ${rowTo - rowFrom} ranking rows`, 'internal');
    // Only the next layer reads the scores, and only when it prunes: otherwise no rows are gathered.
    const ranks = opts.schedule !== null && keepAt(opts.schedule, l + 1) !== null;
    const { y, attn, past } = await runLayer(part, seq, l, x, queries, context, ranks ? j0 : 0, ranks ? j1 : 0);
    for (const i of queries) seq.deepen(i, lk + 1);

    if (ranks && opts.schedule) {
      // attn is over keys [the layer's past rows..., queries...]; realign it with `active` (the
      // ascending merge of context and queries).
      const H = cfg.nHeads;
      const t = past + q;
      const perHead = new Float32Array(H * m); // [heads, m]
      for (let j = 0, cj = 0, qj = 0; j < m; j++) {
        const key = cj < c && context[cj] === active[j] ? seq.kv.rowIndex(lk, context[cj++]) : past + qj++;
        for (let h = 0; h < H; h++) perHead[h * m + j] = attn[h * t + key];
      }
      const own = importance(perHead, H, opts.schedule.heads, opts.schedule.pool);
      if (ranking.fresh) {
        if (opts.schedule.signal && opts.schedule.signal.kind !== 'last') seq.rankMemo.remember(lk, active, own, n);
        scores = own;
      } else scores = seq.rankMemo.recall(lk, active, own);
    } else scores = null;

    carried = new Map();
    for (let j = 0; j < q; j++) carried.set(queries[j], y.subarray(j * dim, (j + 1) * dim));
    out = { queries, y };

    stats.computedPerLayer.push(q);
    stats.revivedPerLayer.push(revived.length);
    stats.activePerLayer.push(active.length);
    stats.revived += revived.length;
    stats.flops += layerFlops(cfg, q, past + q); // the keys the graph ran over, masked ones included
    stats.denseFlops += layerFlops(cfg, into.newTokens.length, n);
    await opts.progress?.();
  }
  stats.auxEntries = seq.aux.size;
  stats.kvEntries = seq.kvEntries();
  const frontier: Frontier = {
    layer: b,
    start: into.start,
    newTokens: into.newTokens,
    active,
    scores,
    ranking,
    carried: out.queries,
    hidden: out.y,
  };
  return { frontier, stats };
}

/** The last token's hidden state [dim] in a frontier that left the last layer. */
export function lastHidden(f: Frontier, dim: number): Float32Array {
  const last = f.start + f.newTokens.length - 1;
  const j = f.carried.length - 1;
  if (j < 0 || f.carried[j] !== last) throw new EngineError('the last token did not reach the final layer', 'internal');
  return f.hidden.subarray(j * dim, (j + 1) * dim);
}

/** Logits [vocab] of the last token, from the frontier leaving the last layer. */
export async function headStep(part: Pick<ModelPart, 'config' | 'head'>, f: Frontier): Promise<Float32Array> {
  const { dim, vocabSize, nLayers } = part.config;
  if (f.layer !== nLayers)
    throw new EngineError(`the head was handed the frontier entering layer ${f.layer}`, 'internal');
  if (part.head.reduce((s, p) => s + p.rows, 0) !== vocabSize)
    throw new EngineError('this model part holds only some of the classifier', 'internal');
  return headLogits(part.head, lastHidden(f, dim), dim, vocabSize);
}

/** FLOPs of the classifier for one token. */
export const headFlops = (cfg: ModelConfig) => 2 * cfg.dim * cfg.vocabSize;

/** One step's statistics from its groups' (in layer order). */
export function stepStats(cfg: ModelConfig, newTokens: number, groups: readonly LayerStats[], ms: number): StepStats {
  const s: StepStats = {
    newTokens,
    computedPerLayer: [],
    revivedPerLayer: [],
    activePerLayer: [],
    revived: 0,
    auxEntries: 0,
    kvEntries: 0,
    flops: headFlops(cfg),
    denseFlops: headFlops(cfg),
    ms,
  };
  for (const g of groups) {
    s.computedPerLayer.push(...g.computedPerLayer);
    s.revivedPerLayer.push(...g.revivedPerLayer);
    s.activePerLayer.push(...g.activePerLayer);
    s.revived += g.revived;
    s.auxEntries += g.auxEntries;
    s.kvEntries += g.kvEntries;
    s.flops += g.flops;
    s.denseFlops += g.denseFlops;
  }
  return s;
}

/** What enters a stage of a step: the new tokens (appended after `start`) for a part holding the embedding, or the frontier entering its first layer. */
export type StageInput = { tokens: number[]; start: number; ranking?: Ranking } | { frontier: Frontier };

/** What leaves a stage: the last token's logits from a part holding the whole classifier, else the frontier leaving its last layer. */
export type StageOutput = { frontier: Frontier } | { logits: Float32Array };

/**
 * Some of a step's layers, run in this isolate (runPart) or by objects reached by a call
 * (src/worker/groups/chain.ts): how a step runs is the list of its stages, in layer order. A stage
 * answers the figures of each part it ran (one for runPart; a chain of layer groups, one each).
 */
export type Stage = (input: StageInput, opts: StepOptions) => Promise<{ output: StageOutput; stats: LayerStats[] }>;

/** A part of the model in this isolate, with the state it owns, as a stage. */
export const partStage =
  (part: ModelPart, seq: SequenceState): Stage =>
  async (input, opts) => {
    const { output, stats } = await runPart(part, seq, input, opts);
    return { output, stats: [stats] };
  };

/**
 * One part's share of a step, with the state it owns: embeds the tokens if handed them, runs its
 * layers, and applies the classifier if it holds all of it. The whole model is one part; a layer
 * group is another.
 */
export async function runPart(
  part: ModelPart,
  seq: SequenceState,
  input: StageInput,
  opts: StepOptions,
): Promise<{ output: StageOutput; stats: LayerStats }> {
  const into = 'tokens' in input ? await embedStep(part, input.start, input.tokens, input.ranking) : input.frontier;
  const { frontier, stats } = await runLayers(part, seq, into, opts);
  const wholeHead = part.head.length > 0 && part.head.reduce((s, p) => s + p.rows, 0) === part.config.vocabSize;
  return { output: wholeHead ? { logits: await headStep(part, frontier) } : { frontier }, stats };
}

/**
 * The composition of a step, the one place it is written: the new tokens (embedded first by
 * `ends.embed` when the caller holds the embedding) go through the stages in order, each handing
 * the next its frontier, until one answers logits, or `ends.head` applies the classifier to the
 * frontier leaving the last. Returns the logits and each part's statistics (a stage may run several).
 */
export async function composeStep(
  stages: readonly Stage[],
  start: number,
  newTokens: readonly number[],
  opts: StepOptions,
  ends: {
    embed?: (start: number, tokens: readonly number[], ranking?: Ranking) => Promise<Frontier>;
    head?: (leaving: Frontier) => Promise<Float32Array>;
  } = {},
): Promise<{ logits: Float32Array; stats: LayerStats[] }> {
  let input: StageInput = ends.embed
    ? { frontier: await ends.embed(start, newTokens, opts.ranking) }
    : { tokens: [...newTokens], start, ...(opts.ranking ? { ranking: opts.ranking } : {}) };
  const stats: LayerStats[] = [];
  for (const [k, stage] of stages.entries()) {
    const { output, stats: s } = await stage(input, opts);
    stats.push(...s);
    if ('logits' in output) {
      if (k !== stages.length - 1) throw new EngineError(`stage ${k} of ${stages.length} answered logits`, 'internal');
      return { logits: output.logits, stats };
    }
    input = { frontier: output.frontier };
  }
  if (!ends.head || !('frontier' in input)) throw new EngineError('no stage holds the classifier', 'internal');
  return { logits: await ends.head(input.frontier), stats };
}

/**
 * One generation step on the whole model in this isolate: appends `newTokens` to the sequence and
 * runs them through the model with LazyLLM's progressive pruning, returning the logits of the last
 * token. A split model runs the same composition with its layers in groups (src/worker/groups/chain.ts).
 */
export async function runStep(
  model: ModelPart,
  seq: SequenceState,
  newTokens: readonly number[],
  opts: StepOptions,
): Promise<{ logits: Float32Array; stats: StepStats }> {
  const t0 = performance.now();
  const { logits, stats } = await composeStep([partStage(model, seq)], seq.length, newTokens, opts);
  return { logits, stats: stepStats(model.config, newTokens.length, stats, performance.now() - t0) };
}

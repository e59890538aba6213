import { EngineError } from './errors.js';

/**
 * Which query rows' attention ranks the tokens (the importance signal).
 * - last: the last prompt token's row (the paper's rule). Under a chat template that token is the
 *   template's tail, whose attention ranks the fact a question needs no better than chance.
 * - query: the rows of the question (the final user message's last paragraph, a span the chat
 *   template's rendering gives exactly, src/model/chat-prompt.ts). Needs a chat request.
 * - window: the last `rows` prompt tokens (SnapKV's observation window): text without a question.
 */
export type Signal = { kind: 'last' } | { kind: 'query' } | { kind: 'window'; rows: number };

/** How the per-head scores of a signal become one score per token: the mean (the paper) or the max over heads. */
export type HeadReduction = 'mean' | 'max';

/**
 * LazyLLM pruning schedule. At each pruning layer the active set becomes the top `keep` share of
 * the incoming set, ranked by the previous layer's attention from the signal's rows. Non-pruning
 * layers keep the incoming set. Ratios are relative to the incoming set, so they compound with depth.
 */
export interface Schedule {
  prune: ReadonlyArray<{ layer: number; keep: number }>;
  /** Keep token 0 (BOS) at every layer: it soaks up attention mass the model relies on. */
  keepFirst: boolean;
  /**
   * Never prune an active set below this many tokens (default 1). Short contexts gain almost
   * nothing from pruning and lose the most fidelity to it, so a floor keeps them dense.
   */
  minActive?: number;
  /**
   * At most this many tokens revived from the Aux Cache per pruning layer and step (default: no
   * limit, the paper's semantics). Each revival is a row the step computes at that layer and every
   * deeper one it survives, so the first decode steps after a long pruned prefill carry most of the
   * work prefill skipped; a budget spreads it out, or with 0 drops it, at some cost in fidelity.
   */
  reviveBudget?: number;
  /** the rows that rank (default last) */
  signal?: Signal;
  /** head reduction (default mean, the paper's) */
  heads?: HeadReduction;
  /**
   * Max-pool each token's score over the `pool` active tokens centred on it (default 1: none). A
   * fact is a run of tokens, and attention lands on a few of them; pooling keeps the run together.
   */
  pool?: number;
}

export const KEEP_ALL: Schedule = { prune: [], keepFirst: false };

const invalidSchedule = (message: string) => new EngineError(message, 'invalid_schedule', 'schedule');

/**
 * Parses "2:0.5,4:0.6" (layer:keep-share pairs), with optional items "bos" (keep token 0),
 * "min:N" (never prune below N tokens), "revive:N" (at most N revivals per pruning layer and step),
 * "signal:last|query|window:K", "heads:mean|max", "pool:K", or "all" alone for no pruning. An item
 * given twice, or "all" beside anything else, is refused rather than guessed at. Layers are checked
 * against a model by `validateSchedule`.
 */
export function parseSchedule(spec: string): Schedule {
  const items = spec.split(',').map((s) => s.trim());
  if (spec.trim() === '')
    throw invalidSchedule(`schedule "${spec}" is empty; use "all" for no pruning or "L:share,..."`);
  if (items.includes('all')) {
    if (items.length > 1)
      throw invalidSchedule(
        `schedule "${spec}" contradicts itself: "all" (no pruning) cannot be combined with other items`,
      );
    return KEEP_ALL;
  }
  const s: { -readonly [K in keyof Schedule]: Schedule[K] } = { prune: [], keepFirst: false };
  const prune: { layer: number; keep: number }[] = [];
  const seen = new Set<string>();
  const once = (key: string, item: string) => {
    if (seen.has(key)) throw invalidSchedule(`schedule "${spec}" names ${key} twice ("${item}")`);
    seen.add(key);
  };
  for (const item of items) {
    if (item === '') throw invalidSchedule(`schedule "${spec}" has an empty item`);
    let m: RegExpExecArray | null;
    if (item === 'bos') {
      once('bos', item);
      s.keepFirst = true;
    } else if ((m = /^min:(\d+)$/.exec(item))) {
      once('min', item);
      s.minActive = Number(m[1]);
    } else if ((m = /^revive:(\d+)$/.exec(item))) {
      once('revive', item);
      s.reviveBudget = Number(m[1]);
    } else if ((m = /^signal:(last|query|window:(\d+))$/.exec(item))) {
      once('signal', item);
      s.signal =
        m[1] === 'last'
          ? { kind: 'last' }
          : m[1] === 'query'
            ? { kind: 'query' }
            : { kind: 'window', rows: Number(m[2]) };
    } else if ((m = /^heads:(mean|max)$/.exec(item))) {
      once('heads', item);
      s.heads = m[1] as HeadReduction;
    } else if ((m = /^pool:(\d+)$/.exec(item))) {
      once('pool', item);
      s.pool = Number(m[1]);
    } else if ((m = /^(\d+):(\d*\.?\d+)$/.exec(item))) {
      prune.push({ layer: Number(m[1]), keep: Number(m[2]) });
    } else {
      throw invalidSchedule(
        `schedule item "${item}" is not "layer:share" (e.g. "2:0.5"), "bos", "min:N", "revive:N", "signal:last|query|window:K", "heads:mean|max", "pool:K" or "all"`,
      );
    }
  }
  s.prune = prune;
  return s;
}

export function formatSignal(signal: Signal): string {
  return signal.kind === 'window' ? `window:${signal.rows}` : signal.kind;
}

export function formatSchedule(s: Schedule): string {
  if (
    s.prune.length === 0 &&
    !s.keepFirst &&
    s.minActive === undefined &&
    s.reviveBudget === undefined &&
    !s.signal &&
    !s.heads &&
    s.pool === undefined
  )
    return 'all';
  return [
    ...(s.keepFirst ? ['bos'] : []),
    ...(s.minActive !== undefined ? [`min:${s.minActive}`] : []),
    ...(s.reviveBudget !== undefined ? [`revive:${s.reviveBudget}`] : []),
    ...(s.signal ? [`signal:${formatSignal(s.signal)}`] : []),
    ...(s.heads ? [`heads:${s.heads}`] : []),
    ...(s.pool !== undefined ? [`pool:${s.pool}`] : []),
    ...s.prune.map((p) => `${p.layer}:${p.keep}`),
  ].join(',');
}

/** The widest pooling kernel and window a schedule may ask for: beyond them a signal only blurs. */
export const POOL_MAX = 255;
export const WINDOW_ROWS_MAX = 1024;

/** Rejects schedules that cannot mean anything for a model with `nLayers` layers, saying why. */
export function validateSchedule(s: Schedule, nLayers: number): Schedule {
  if (s.minActive !== undefined && !(Number.isInteger(s.minActive) && s.minActive >= 1)) {
    throw invalidSchedule(`invalid schedule: min ${s.minActive} must be an integer >= 1`);
  }
  if (s.reviveBudget !== undefined && !(Number.isInteger(s.reviveBudget) && s.reviveBudget >= 0)) {
    throw invalidSchedule(`invalid schedule: revive ${s.reviveBudget} must be an integer >= 0`);
  }
  if (
    s.signal?.kind === 'window' &&
    !(Number.isInteger(s.signal.rows) && s.signal.rows >= 1 && s.signal.rows <= WINDOW_ROWS_MAX)
  ) {
    throw invalidSchedule(
      `invalid schedule: signal window ${s.signal.rows} must be an integer from 1 to ${WINDOW_ROWS_MAX}`,
    );
  }
  if (s.pool !== undefined && !(Number.isInteger(s.pool) && s.pool >= 1 && s.pool <= POOL_MAX && s.pool % 2 === 1)) {
    throw invalidSchedule(
      `invalid schedule: pool ${s.pool} must be an odd integer from 1 to ${POOL_MAX} (a window centred on each token)`,
    );
  }
  let prev = 0;
  for (const { layer, keep } of s.prune) {
    const why = !Number.isInteger(layer)
      ? `layer ${layer} is not an integer`
      : layer < 1
        ? `layer ${layer} cannot prune: scores come from the layer before, so pruning starts at layer 1`
        : layer >= nLayers
          ? `layer ${layer} does not exist (the model has layers 0..${nLayers - 1})`
          : layer <= prev
            ? `pruning layers must be strictly increasing (${layer} after ${prev})`
            : !(keep > 0 && keep <= 1)
              ? `keep share ${keep} at layer ${layer} must be in (0, 1]`
              : null;
    if (why) throw invalidSchedule(`invalid schedule: ${why}`);
    prev = layer;
  }
  return s;
}

/**
 * What ranks one step's tokens, in sequence indices: the rows whose attention ranks them, and the
 * first index from which every token is kept (the rows themselves, whatever follows them, and the
 * tokens generated since). `fresh`: the rows are this step's, so the scores are computed from them
 * and remembered for the decode steps that follow (signals other than last); otherwise (a decode
 * step under such a signal) the remembered scores rank, and nothing the question did not ask for
 * comes back.
 */
/** [from, to) sequence indices */
export interface TokenSpan {
  from: number;
  to: number;
}

export interface Ranking {
  /** [from, to): the ranking rows, among this step's new tokens */
  from: number;
  to: number;
  keepFrom: number;
  fresh: boolean;
}

/**
 * The ranking of a step that appends `newTokens` tokens after `start`. The prefill (`prefill`
 * null) takes its rows from the signal: the last token, the last K tokens, or the question's span
 * (sequence indices). A decode step ranks by its own token under the paper's signal and
 * by what the prefill remembered otherwise, keeping what the prefill kept.
 */
export function rankingFor(
  signal: Signal | undefined,
  start: number,
  newTokens: number,
  prefill: Ranking | null,
  question: TokenSpan | null,
): Ranking {
  const n = start + newTokens;
  const last: Ranking = { from: n - 1, to: n, keepFrom: n - 1, fresh: true };
  if (!signal || signal.kind === 'last') return last;
  if (prefill) return { from: n - 1, to: n, keepFrom: prefill.keepFrom, fresh: false };
  if (signal.kind === 'window') {
    const from = Math.max(start, n - signal.rows);
    return { from, to: n, keepFrom: from, fresh: true };
  }
  if (!question)
    throw invalidSchedule(
      'signal:query needs a question: it ranks by the final user message of a chat request (use signal:window:K for plain text)',
    );
  if (!(question.from < question.to && question.to <= n))
    throw new EngineError(
      `question tokens ${question.from}..${question.to - 1} lie outside the sequence of ${n}`,
      'internal',
    );
  // A session turn that reuses part of the question from its cache ranks by the rest of it; by the
  // last token when all of it was cached (a regenerated reply: nothing new was asked).
  const a = Math.max(start, question.from);
  if (a >= question.to) return last;
  return { from: a, to: question.to, keepFrom: a, fresh: true };
}

/**
 * The rankings of one generation's steps, in order: the first (the prefill) from the signal, each
 * later one (a decode step) from the first. generate() and a turn's replay both use it, so a
 * replayed turn ranks exactly as it did.
 */
export function stepRankings(
  signal: Signal | undefined,
  question: TokenSpan | null,
): (start: number, newTokens: number) => Ranking {
  let prefill: Ranking | null = null;
  return (start, newTokens) => {
    const r = rankingFor(signal, start, newTokens, prefill, question);
    prefill ??= r;
    return r;
  };
}

/**
 * One score per token from the signal's per-head attention: `perHead` [heads, m] (row h holds head
 * h's probabilities, mean over the signal's rows, aligned with the active set) reduced over heads
 * by `heads`, then max-pooled over the `pool` entries centred on each (neighbours in the active set,
 * which at the first pruning layer are the prompt's positions). Returns [m].
 */
export function importance(
  perHead: Float32Array,
  nHeads: number,
  heads: HeadReduction = 'mean',
  pool = 1,
): Float32Array {
  const m = perHead.length / nHeads;
  if (!Number.isInteger(m))
    throw new EngineError(`${perHead.length} attention values do not split into ${nHeads} heads`, 'internal');
  const reduced = new Float32Array(m); // [m]
  for (let h = 0; h < nHeads; h++) {
    const row = perHead.subarray(h * m, (h + 1) * m);
    if (heads === 'max') for (let j = 0; j < m; j++) reduced[j] = h === 0 ? row[j] : Math.max(reduced[j], row[j]);
    else for (let j = 0; j < m; j++) reduced[j] += row[j] / nHeads;
  }
  return pool > 1 ? maxPool(reduced, pool) : reduced;
}

/** out[j] = max of a[j - r .. j + r] (clipped to the array), r = (k - 1) / 2: a monotone deque, O(m). */
export function maxPool(a: Float32Array, k: number): Float32Array {
  const m = a.length;
  const r = (k - 1) >> 1;
  const out = new Float32Array(m); // [m]
  const dq = new Int32Array(m); // indices with decreasing values
  let head = 0;
  let tail = 0;
  let next = 0; // next index to enter the window
  for (let j = 0; j < m; j++) {
    for (; next < Math.min(m, j + r + 1); next++) {
      while (tail > head && a[dq[tail - 1]] <= a[next]) tail--;
      dq[tail++] = next;
    }
    while (dq[head] < j - r) head++;
    out[j] = a[dq[head]];
  }
  return out;
}

/** The keep share at `layer`, or null when the layer does not prune. */
export function keepAt(s: Schedule, layer: number): number | null {
  return s.prune.find((p) => p.layer === layer)?.keep ?? null;
}

/** Whether token 0 is always kept: when asked ("bos"), and always under a question or window signal (the attention sink). */
export function keepsFirst(s: Schedule): boolean {
  return s.keepFirst || (s.signal !== undefined && s.signal.kind !== 'last');
}

/**
 * The next active set: every token from index `keepFrom` on (the signal's rows and what follows
 * them; with the paper's signal just the last token, the one being predicted), token 0 if asked,
 * and the best of the others by `scores`: max(keep share of the others, minActive) in all.
 * `incoming` holds ascending token indices; `scores[j]` belongs to `incoming[j]`. Ties go to the
 * more recent token. Returns ascending indices, a subset of `incoming`.
 */
export function selectActive(
  incoming: Int32Array,
  scores: Float32Array,
  keep: number,
  keepFirst: boolean,
  minActive = 1,
  keepFrom = Infinity,
): Int32Array {
  const m = incoming.length;
  if (scores.length !== m)
    throw new EngineError(`scores (${scores.length}) and incoming set (${m}) differ in length`, 'internal');
  // Protected tokens beyond the last do not count against the share: a decode step that adds one
  // keeps the same others as the prefill did.
  let extra = 0;
  while (extra < m - 1 && incoming[m - 2 - extra] >= keepFrom) extra++;
  const k = Math.min(m, Math.max(1, minActive, extra + Math.ceil(keep * (m - extra))));
  if (k === m) return incoming;
  const chosen = new Uint8Array(m);
  let taken = 0;
  const force = (j: number) => {
    if (!chosen[j]) {
      chosen[j] = 1;
      taken++;
    }
  };
  for (let j = m - 1 - extra; j < m; j++) force(j);
  if (keepFirst && incoming[0] === 0 && taken < k) force(0);
  // The `left` best of the rest by (score desc, index desc), without a comparator sort on every
  // pruning layer of every step: the threshold from a native sort of the free scores, everything
  // above it, then ties at the threshold to the most recent tokens.
  const left = k - taken;
  if (left > 0) {
    const free = new Float32Array(m - taken);
    for (let j = 0, f = 0; j < m; j++) if (!chosen[j]) free[f++] = scores[j];
    free.sort();
    const threshold = free[free.length - left];
    let ties = left;
    for (let j = 0; j < m; j++) {
      if (!chosen[j] && scores[j] > threshold) {
        chosen[j] = 1;
        ties--;
      }
    }
    for (let j = m - 1; j >= 0 && ties > 0; j--) {
      if (!chosen[j] && scores[j] === threshold) {
        chosen[j] = 1;
        ties--;
      }
    }
  }
  const out = new Int32Array(k);
  for (let j = 0, o = 0; j < m; j++) if (chosen[j]) out[o++] = incoming[j];
  return out;
}

/**
 * Applies a revival budget to a selection: of the selected tokens that would be revived (`revivable`),
 * keeps the `budget` best by `score` (ties to the more recent) and leaves the rest out of the set;
 * they stay parked. Returns ascending indices, a subset of `selected`.
 */
export function limitRevivals(
  selected: Int32Array,
  revivable: (i: number) => boolean,
  score: (i: number) => number,
  budget: number,
): Int32Array {
  const candidates = [...selected].filter(revivable);
  if (candidates.length <= budget) return selected;
  const keep = new Set(candidates.sort((a, b) => score(b) - score(a) || b - a).slice(0, budget));
  return selected.filter((i) => !revivable(i) || keep.has(i));
}

/** What a prompt offers to rank by: a question (a chat request's last user paragraph) or only text. */
export type PromptKind = 'question' | 'text';

/**
 * The default schedule, chosen by measurement.
 * - Up to 23 layers (stories260K, the 12-layer benchmark shapes): the paper's signal; keep BOS,
 *   prune after the first layer to 55% and at two thirds of the depth to 60% of the survivors; 8+
 *   layers also prune at one third of the depth (docs/LAZYLLM.md, "LazyLLM: how it runs", on the dev
 *   text). These models are not chat models, and no query-aware signal was calibrated on them.
 * - 24+ layers (SmolLM2-135M's 30), a chat prompt with a question: rank by the question's rows,
 *   max over heads, pooled over 15 neighbours; keep 20% from 0.27 of the depth (layer 8), half of
 *   that from 0.53 (16) and again from 2/3 (20): 0.33 of dense's prefill FLOPs. On the task suite
 *   (docs/QUERY-AWARE.md, 16 prompts a length, side by side) it answered as many prompts as dense
 *   at 2k (8 of 16, 2.98x TTFT) and one more at 1k, where the paper's signal kept dense's answers
 *   only pruning at 2/3 of the depth (1.2x) and lost 7 of 8 pruning from layer 8. Layers 9-13 rank
 *   poorly with every signal, so the first cut comes before them. At 4k it lost 2 of 4 (3.16x),
 *   where one cut (8:0.3, 2.2x) kept all 4: the later cuts want a floor that grows with the prompt.
 * - 24+ layers, text without a question (/v1/completions): the window of the last 16 tokens, max
 *   over heads, pooled 15, keeping half from layer 8 (0.56 of the FLOPs): on natural text at 2k, KL
 *   0.018 against dense, where keeping 30% gave 0.144.
 * Sets of up to 128 tokens stay whole: below that pruning saves little and short greedy outputs
 * drift from dense.
 */
export function defaultSchedule(nLayers: number, prompt: PromptKind = 'text'): Schedule {
  if (nLayers < 2) return KEEP_ALL;
  if (nLayers >= 24) {
    const at = (f: number) => Math.round(f * nLayers);
    const common = { keepFirst: true, minActive: 128, heads: 'max' as const, pool: 15 };
    if (prompt === 'question') {
      return {
        ...common,
        signal: { kind: 'query' },
        prune: [
          { layer: at(0.27), keep: 0.2 },
          { layer: at(0.53), keep: 0.5 },
          { layer: at(2 / 3), keep: 0.5 },
        ],
      };
    }
    return { ...common, signal: { kind: 'window', rows: 16 }, prune: [{ layer: at(0.27), keep: 0.5 }] };
  }
  const points =
    nLayers >= 8 ? [1, Math.round(nLayers / 3), Math.round((2 * nLayers) / 3)] : [1, Math.round((2 * nLayers) / 3)];
  const layers = [...new Set(points)].filter((l) => l >= 1 && l < nLayers);
  return { prune: layers.map((layer, k) => ({ layer, keep: k === 0 ? 0.55 : 0.6 })), keepFirst: true, minActive: 128 };
}

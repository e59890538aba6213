import { EngineError } from './errors.js';

/**
 * LazyLLM pruning schedule. At each pruning layer the active set becomes the top `keep` share of
 * the incoming set, ranked by the previous layer's last-token attention. Non-pruning layers keep
 * the incoming set. Ratios are relative to the incoming set, so they compound with depth.
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
  /**
   * Rank tokens by the attention of the last this-many query rows of the step, averaged (default 1:
   * the last token's, the paper's). Only prefill steps have more than one row; a chat prompt ends in
   * template tokens, and a window covering the question ranks the context by what is asked.
   */
  scoreRows?: number;
}

export const KEEP_ALL: Schedule = { prune: [], keepFirst: false };

/**
 * Parses "2:0.5,4:0.6" (layer:keep-share pairs), with optional items "bos" (keep token 0) and
 * "min:N" (never prune below N tokens), "revive:N" (at most N revivals per pruning layer and step),
 * "rows:N" (rank by the mean attention of the step's last N query rows),
 * "all" for no pruning. Layers are checked against a model by `validateSchedule`.
 */
export function parseSchedule(spec: string): Schedule {
  const items = spec.split(',').map((s) => s.trim());
  if (spec.trim() === '') throw new EngineError(`schedule "${spec}" is empty; use "all" for no pruning or "L:share,..."`, 'invalid_schedule', 'schedule');
  let keepFirst = false;
  let minActive: number | undefined;
  let reviveBudget: number | undefined;
  let scoreRows: number | undefined;
  const prune: { layer: number; keep: number }[] = [];
  for (const item of items) {
    if (item === 'bos') {
      keepFirst = true;
      continue;
    }
    if (item === 'all') continue;
    const min = /^min:(\d+)$/.exec(item);
    if (min) {
      minActive = Number(min[1]);
      continue;
    }
    const revive = /^revive:(\d+)$/.exec(item);
    if (revive) {
      reviveBudget = Number(revive[1]);
      continue;
    }
    const rows = /^rows:(\d+)$/.exec(item);
    if (rows) {
      scoreRows = Number(rows[1]);
      continue;
    }
    if (item === '') throw new EngineError(`schedule "${spec}" has an empty item`, 'invalid_schedule', 'schedule');
    const m = /^(\d+):(\d*\.?\d+)$/.exec(item);
    if (!m) throw new EngineError(`schedule item "${item}" is not "layer:share" (e.g. "2:0.5"), "bos", "min:N", "revive:N", "rows:N" or "all"`, 'invalid_schedule', 'schedule');
    prune.push({ layer: Number(m[1]), keep: Number(m[2]) });
  }
  return {
    prune,
    keepFirst,
    ...(minActive !== undefined ? { minActive } : {}),
    ...(reviveBudget !== undefined ? { reviveBudget } : {}),
    ...(scoreRows !== undefined ? { scoreRows } : {}),
  };
}

export function formatSchedule(s: Schedule): string {
  const parts = s.prune.map((p) => `${p.layer}:${p.keep}`);
  if (s.scoreRows !== undefined) parts.unshift(`rows:${s.scoreRows}`);
  if (s.reviveBudget !== undefined) parts.unshift(`revive:${s.reviveBudget}`);
  if (s.minActive !== undefined) parts.unshift(`min:${s.minActive}`);
  if (s.keepFirst) parts.unshift('bos');
  return parts.length ? parts.join(',') : 'all';
}

/** The most rows a window can cover (step.ts keeps every prefill chunk at least as long as the window, within a bound on its memory). */
export const PREFILL_SCORE_ROWS_MAX = 64;

/** Rejects schedules that cannot mean anything for a model with `nLayers` layers, saying why. */
export function validateSchedule(s: Schedule, nLayers: number): Schedule {
  if (s.minActive !== undefined && !(Number.isInteger(s.minActive) && s.minActive >= 1)) {
    throw new EngineError(`invalid schedule: min ${s.minActive} must be an integer >= 1`, 'invalid_schedule', 'schedule');
  }
  if (s.reviveBudget !== undefined && !(Number.isInteger(s.reviveBudget) && s.reviveBudget >= 0)) {
    throw new EngineError(`invalid schedule: revive ${s.reviveBudget} must be an integer >= 0`, 'invalid_schedule', 'schedule');
  }
  if (s.scoreRows !== undefined && !(Number.isInteger(s.scoreRows) && s.scoreRows >= 1 && s.scoreRows <= PREFILL_SCORE_ROWS_MAX)) {
    throw new EngineError(`invalid schedule: rows ${s.scoreRows} must be an integer from 1 to ${PREFILL_SCORE_ROWS_MAX}`, 'invalid_schedule', 'schedule');
  }
  let prev = 0;
  for (const { layer, keep } of s.prune) {
    const why =
      !Number.isInteger(layer) ? `layer ${layer} is not an integer`
      : layer < 1 ? `layer ${layer} cannot prune: scores come from the layer before, so pruning starts at layer 1`
      : layer >= nLayers ? `layer ${layer} does not exist (the model has layers 0..${nLayers - 1})`
      : layer <= prev ? `pruning layers must be strictly increasing (${layer} after ${prev})`
      : !(keep > 0 && keep <= 1) ? `keep share ${keep} at layer ${layer} must be in (0, 1]`
      : null;
    if (why) throw new EngineError(`invalid schedule: ${why}`, 'invalid_schedule', 'schedule');
    prev = layer;
  }
  return s;
}

/** The keep share at `layer`, or null when the layer does not prune. */
export function keepAt(s: Schedule, layer: number): number | null {
  return s.prune.find((p) => p.layer === layer)?.keep ?? null;
}

/**
 * The next active set: the top max(ceil(keep * |incoming|), minActive) tokens of `incoming` by
 * `scores`, always including the last token (the one being predicted) and, if asked, token 0.
 * `incoming` holds ascending token indices; `scores[j]` belongs to `incoming[j]`. Ties go to the
 * more recent token. Returns ascending indices, a subset of `incoming`.
 */
export function selectActive(incoming: Int32Array, scores: Float32Array, keep: number, keepFirst: boolean, minActive = 1): Int32Array {
  const m = incoming.length;
  if (scores.length !== m) throw new EngineError(`scores (${scores.length}) and incoming set (${m}) differ in length`, 'internal');
  const k = Math.min(m, Math.max(1, minActive, Math.ceil(keep * m)));
  if (k === m) return incoming;
  const chosen = new Uint8Array(m);
  let taken = 0;
  const force = (j: number) => {
    if (!chosen[j] && taken < k) {
      chosen[j] = 1;
      taken++;
    }
  };
  force(m - 1);
  if (keepFirst && incoming[0] === 0) force(0);
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
export function limitRevivals(selected: Int32Array, revivable: (i: number) => boolean, score: (i: number) => number, budget: number): Int32Array {
  const candidates = [...selected].filter(revivable);
  if (candidates.length <= budget) return selected;
  const keep = new Set(candidates.sort((a, b) => score(b) - score(a) || b - a).slice(0, budget));
  return selected.filter((i) => !revivable(i) || keep.has(i));
}

/**
 * The default schedule, chosen by measurement.
 * - Up to 23 layers (stories260K, the 12-layer benchmark shapes): keep BOS, prune after the first
 *   layer to 55% and at two thirds of the depth to 60% of the survivors; 8+ layers also prune at one
 *   third of the depth (README, "LazyLLM: fidelity and speed", on the dev text).
 * - 24+ layers (SmolLM2-135M's 30): prune once, at two thirds of the depth, to half. On the
 *   retrieval tasks every cheaper schedule answered fewer prompts than dense, and 20:0.5 as many:
 *   on 8 prompts at 1k (`npm run calibrate -- --tasks passkey,passkey-distractors --prompts 4
 *   --speed flops`, README) it matched dense's 6 of 8 at 0.81 of dense's prefill FLOPs, while
 *   keeping less from the same layer (20:0.2, 0.72) gave one answer fewer, pruning earlier (16:0.3,
 *   0.65) two fewer, and 0.57 or less of the FLOPs three to five fewer; at 2k it gave dense's
 *   verdict on 47 of 48 suite prompts (the other one better), with first-token KL 0.0025 on
 *   natural text. A deep model's early and middle layers still route the facts a question needs,
 *   and their last-token attention does not yet show it.
 *   So 3x faster first tokens (about 0.33 of the FLOPs) is out of reach at equal accuracy here.
 * Sets of up to 128 tokens stay whole: below that pruning saves little and short greedy outputs
 * drift from dense.
 */
export function defaultSchedule(nLayers: number): Schedule {
  if (nLayers < 2) return KEEP_ALL;
  if (nLayers >= 24) return { prune: [{ layer: Math.round((2 * nLayers) / 3), keep: 0.5 }], keepFirst: true, minActive: 128 };
  const points = nLayers >= 8 ? [1, Math.round(nLayers / 3), Math.round((2 * nLayers) / 3)] : [1, Math.round((2 * nLayers) / 3)];
  const layers = [...new Set(points)].filter((l) => l >= 1 && l < nLayers);
  return { prune: layers.map((layer, k) => ({ layer, keep: k === 0 ? 0.55 : 0.6 })), keepFirst: true, minActive: 128 };
}

/**
 * A model split into G contiguous layer groups, each a ModelPart with its own SequenceState
 * holding only its layers' KV rows and Aux Cache entries (in a Worker, each group is a Durable
 * Object: src/worker/groups/). A step is embedStep -> runLayers on each group in order -> headStep;
 * between two groups crosses a Frontier (src/engine/step.ts): the active set, its scores and the
 * hidden states of the tokens the last layer computed. Pruning at a layer is decided in the group
 * that runs it, so a pruned token's Aux Cache entry lives in the group that will resume it.
 */
import type { ModelConfig } from '../model/config.js';
import type { QuantSpec } from '../model/quant.js';
import { estimatePartMemory, MB, type MemoryEstimate, type PartSpec } from './memory-budget.js';
import { SequenceState } from './caches.js';
import { EngineError } from './errors.js';
import type { LayerRange, ModelPart } from './model.js';
import { composeStep, partStage, stepStats, type Frontier, type StepOptions, type StepStats } from './step.js';

/** `groups` contiguous ranges covering layers 0..nLayers-1, sizes differing by at most one (the earlier ones larger). */
export function splitLayers(nLayers: number, groups: number): LayerRange[] {
  if (!(Number.isInteger(groups) && groups >= 1 && groups <= nLayers))
    throw new EngineError(
      `${groups} layer groups: need an integer from 1 to the model's ${nLayers} layers`,
      'invalid_request',
      'groups',
    );
  const out: LayerRange[] = [];
  for (let g = 0, start = 0; g < groups; g++) {
    const size = Math.floor(nLayers / groups) + (g < nLayers % groups ? 1 : 0);
    out.push({ start, end: start + size });
    start += size;
  }
  return out;
}

/**
 * The state of one group: a SequenceState over the group's layers only, as if they were a model
 * of their own. Its layer k is model layer range.start + k, and a token's depth there is its
 * model depth minus range.start, clamped to [0, size]: 0 for a token that stopped before the
 * group (or exactly at its first layer), size for one that went through it.
 */
export function groupState(config: ModelConfig, range: LayerRange): SequenceState {
  return new SequenceState(groupConfig(config, range));
}

/** The config a group's state is built from: the model's, with the group's layer count. */
export function groupConfig(config: ModelConfig, range: LayerRange): ModelConfig {
  return { ...config, nLayers: range.end - range.start };
}

/**
 * A split model run in one process: the groups' parts and states, in layer order; the first part
 * holds the embedding and the last the classifier. Its steps are the same composition as runStep's
 * with one stage per group, and give what runStep gives on the whole model (the same arithmetic,
 * in the same order), which is what tests check.
 */
export class LocalChain {
  readonly states: SequenceState[];

  constructor(readonly parts: readonly ModelPart[]) {
    if (parts.length === 0) throw new EngineError('a chain needs at least one group', 'internal');
    const L = parts[0].config.nLayers;
    parts.forEach((p, g) => {
      const want = g === 0 ? 0 : parts[g - 1].layerRange.end;
      if (p.layerRange.start !== want)
        throw new EngineError(`group ${g} starts at layer ${p.layerRange.start}, expected ${want}`, 'internal');
    });
    if (parts.at(-1)!.layerRange.end !== L)
      throw new EngineError(`the groups end at layer ${parts.at(-1)!.layerRange.end} of ${L}`, 'internal');
    this.states = parts.map((p) => groupState(p.config, p.layerRange));
  }

  get length(): number {
    return this.states[0].length;
  }

  /** Truncates every group's state to n tokens. */
  truncate(n: number): void {
    for (const s of this.states) s.truncate(n);
  }

  async step(newTokens: readonly number[], opts: StepOptions): Promise<{ logits: Float32Array; stats: StepStats }> {
    const t0 = performance.now();
    const stages = this.parts.map((p, g) => partStage(p, this.states[g]));
    const { logits, stats } = await composeStep(stages, this.length, newTokens, opts);
    return { logits, stats: stepStats(this.parts[0].config, newTokens.length, stats, performance.now() - t0) };
  }
}

/** One object of a planned split: its pieces and what they need at the served context (estimatePartMemory). */
export interface GroupPlan {
  layers: LayerRange;
  embed: boolean;
  /** indices of the classifier row parts it holds */
  head: number[];
  /** the front (Worker or session object): the tokenizer and, with `frontEmbeds`, the embedding; no layers */
  front?: boolean;
  bytes: MemoryEstimate;
}

/**
 * Where the pieces of a split into `groups` layer groups and `heads` classifier objects live, the
 * one placement rule: object g < groups is layer group g, holding its layers, the first also the
 * embedding (unless `frontEmbeds`: the front holds it beside the tokenizer) and, without
 * classifier objects, the last the whole classifier; object groups + k is classifier object k,
 * holding the row parts i with i mod heads = k. The classifier is the largest piece of a model with
 * a big vocabulary (SmolLM2: 49152 rows, 108 MiB as f32), so it may need objects of its own.
 */
export function placeSplit(
  nLayers: number,
  headParts: number,
  groups: number,
  heads = 0,
  frontEmbeds = false,
): PartSpec[] {
  if (!(Number.isInteger(heads) && heads >= 0 && heads <= headParts))
    throw new EngineError(`${heads} classifier objects for ${headParts} classifier parts`, 'invalid_request', 'heads');
  const all = Array.from({ length: headParts }, (_, i) => i);
  const layerGroups = splitLayers(nLayers, groups).map((layers, g) => ({
    layers,
    embed: g === 0 && !frontEmbeds,
    head: heads === 0 && g === groups - 1 ? all : [],
    tokenizer: false,
  }));
  const headObjects = Array.from({ length: heads }, (_, k) => ({
    layers: { start: nLayers, end: nLayers },
    embed: false,
    head: all.filter((i) => i % heads === k),
    tokenizer: false,
  }));
  return [...layerGroups, ...headObjects];
}

/**
 * The estimates of the split placeSplit places, one per object; with `frontEmbeds` the front
 * (tokenizer and embedding) is planned as a last object.
 */
export function planSplit(
  cfg: ModelConfig,
  q: QuantSpec,
  headRows: readonly number[],
  groups: number,
  heads = 0,
  frontEmbeds = false,
): GroupPlan[] {
  const plan = (p: PartSpec, front = false): GroupPlan => ({
    layers: p.layers,
    embed: p.embed,
    head: [...p.head],
    ...(front ? { front } : {}),
    bytes: estimatePartMemory(cfg, q, { ...p, tokenizer: front }, headRows),
  });
  const objects = placeSplit(cfg.nLayers, headRows.length, groups, heads, frontEmbeds).map((p) => plan(p));
  const front = { layers: { start: 0, end: 0 }, embed: true, head: [], tokenizer: true };
  return frontEmbeds ? [...objects, plan(front, true)] : objects;
}

/**
 * The fewest objects (layer groups plus classifier objects, fewest layer groups first) whose every
 * object fits `budgetBytes`, or null when no split does (the reason names the piece that is too big).
 */
export function fewestGroups(
  cfg: ModelConfig,
  q: QuantSpec,
  headRows: readonly number[],
  budgetBytes: number,
  frontEmbeds = false,
): { groups: number; heads: number; plan: GroupPlan[] } | { groups: null; reason: string } {
  let best: { groups: number; heads: number; plan: GroupPlan[] } | null = null;
  for (let heads = 0; heads <= headRows.length; heads++) {
    for (let G = 1; G <= cfg.nLayers; G++) {
      const plan = planSplit(cfg, q, headRows, G, heads, frontEmbeds);
      if (plan.every((p) => p.bytes.total <= budgetBytes)) {
        if (!best || G + heads < best.groups + best.heads) best = { groups: G, heads, plan };
        break;
      }
    }
  }
  if (best) return best;
  const last = planSplit(cfg, q, headRows, cfg.nLayers, headRows.length, frontEmbeds);
  const worst = last.reduce((a, b) => (b.bytes.total > a.bytes.total ? b : a));
  const what =
    worst.layers.end > worst.layers.start
      ? `layer ${worst.layers.start}${worst.embed ? ' with the embedding' : ''}`
      : `classifier part(s) ${worst.head.join(', ')}`;
  return {
    groups: null,
    reason: `even split as far as it goes, ${what} needs ${(worst.bytes.total / MB).toFixed(1)} MB`,
  };
}

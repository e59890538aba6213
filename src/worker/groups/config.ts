/**
 * How the served model is split (docs/LAYER-GROUPS.md): LAYER_GROUPS contiguous groups of decoder
 * layers, each run by its own LayerGroup Durable Object; GROUP_CHAINS chains of such objects serve
 * stateless requests, one request per chain at a time. LAYER_GROUPS 1 (the default) runs the whole
 * model in the isolate that answers the request, as before.
 */
import { splitLayers } from '../../engine/layer-group.js';
import type { LayerRange, PartSpec } from '../../engine/model.js';
import type { Env } from '../env.js';

export const DEFAULT_LAYER_GROUPS = 1;
export const DEFAULT_GROUP_CHAINS = 2;

function intVar(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw.trim() === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be an integer >= 1, got "${raw}"`);
  return n;
}

export type GroupEnv = Partial<
  Pick<Env, 'LAYER_GROUPS' | 'GROUP_CHAINS' | 'HEAD_GROUPS' | 'EMBED_IN_FRONT' | 'PREFILL_STEP_TOKENS'>
>;

export const layerGroups = (env: GroupEnv) => intVar('LAYER_GROUPS', env.LAYER_GROUPS, DEFAULT_LAYER_GROUPS);
export const groupChains = (env: GroupEnv) => intVar('GROUP_CHAINS', env.GROUP_CHAINS, DEFAULT_GROUP_CHAINS);
/** Objects holding only classifier row parts (0: the last layer group holds the whole classifier). */
export const headGroups = (env: GroupEnv) =>
  env.HEAD_GROUPS?.trim() === '0' ? 0 : intVar('HEAD_GROUPS', env.HEAD_GROUPS, 0);

/**
 * PREFILL_STEP_TOKENS = C (0, the default: never): a dense prefill of more than C tokens goes
 * through the chain as consecutive steps of at most C tokens (chain.ts). An object's prefill peak
 * is its frontiers and hidden states: 19 MB each for SmolLM2 at 8192 tokens, 2.4 MB at 1024.
 */
export const prefillStepTokens = (env: GroupEnv) =>
  env.PREFILL_STEP_TOKENS?.trim() === '0' ? 0 : intVar('PREFILL_STEP_TOKENS', env.PREFILL_STEP_TOKENS, 0);

/**
 * EMBED_IN_FRONT = 1: the front (Worker or ChatSession object) holds the embedding with the
 * tokenizer and sends the first group the embedded tokens' hidden states, instead of group 0
 * holding it. SmolLM2's embedding is 30 MB as Q8_0 rows: in the first group it is what no longer
 * fits 128 MB at 8k tokens. The embedding holds no state, so where it lives changes no cache.
 */
export function embedInFront(env: GroupEnv): boolean {
  const v = env.EMBED_IN_FRONT?.trim() ?? '';
  if (v !== '' && v !== '0' && v !== '1') throw new Error(`EMBED_IN_FRONT must be 0 or 1, got "${env.EMBED_IN_FRONT}"`);
  return v === '1';
}

/**
 * Object g of a split into `groups` layer groups and `heads` classifier objects: layer group g
 * (g < groups) holds its layers, the first also the embedding (unless `frontEmbeds`) and, without classifier objects,
 * the last the whole classifier; classifier object k (g = groups + k) holds the row parts i with
 * i mod heads = k. The classifier is the largest piece of a model with a big vocabulary (SmolLM2:
 * 49152 rows, 108 MiB as f32), so it may need objects of its own.
 */
export function groupPart(
  nLayers: number,
  headParts: number,
  groups: number,
  g: number,
  heads = 0,
  frontEmbeds = false,
): PartSpec {
  const ranges: LayerRange[] = splitLayers(nLayers, groups);
  if (heads > headParts) throw new Error(`${heads} classifier objects for ${headParts} classifier parts`);
  if (!(Number.isInteger(g) && g >= 0 && g < groups + heads))
    throw new Error(`object ${g} of ${groups} + ${heads} does not exist`);
  const all = Array.from({ length: headParts }, (_, i) => i);
  if (g >= groups)
    return {
      layers: { start: nLayers, end: nLayers },
      embed: false,
      head: all.filter((i) => i % heads === g - groups),
      tokenizer: false,
    };
  return {
    layers: ranges[g],
    embed: g === 0 && !frontEmbeds,
    head: heads === 0 && g === groups - 1 ? all : [],
    tokenizer: false,
  };
}

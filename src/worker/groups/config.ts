/**
 * How the served model is split (README "Layer groups"): LAYER_GROUPS contiguous groups of decoder
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

export type GroupEnv = Partial<Pick<Env, 'LAYER_GROUPS' | 'GROUP_CHAINS'>>;

export const layerGroups = (env: GroupEnv) => intVar('LAYER_GROUPS', env.LAYER_GROUPS, DEFAULT_LAYER_GROUPS);
export const groupChains = (env: GroupEnv) => intVar('GROUP_CHAINS', env.GROUP_CHAINS, DEFAULT_GROUP_CHAINS);

/** Group g of G over nLayers layers: its layers; the first also embeds, the last also holds the classifier. */
export function groupPart(nLayers: number, headParts: number, groups: number, g: number): PartSpec {
  const ranges: LayerRange[] = splitLayers(nLayers, groups);
  if (!(Number.isInteger(g) && g >= 0 && g < groups)) throw new Error(`group ${g} of ${groups} does not exist`);
  return { layers: ranges[g], embed: g === 0, head: g === groups - 1 ? Array.from({ length: headParts }, (_, i) => i) : [], tokenizer: false };
}

/**
 * Where the pieces of a split model live (docs/LAYER-GROUPS.md): which layers, embedding and
 * classifier rows each object of a split into layer groups and classifier objects holds.
 */
import { splitLayers } from '../../engine/layer-group.js';
import type { LayerRange, PartSpec } from '../../engine/model.js';

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

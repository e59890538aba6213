/**
 * The model pieces an isolate holds when the layers are split: a group's part (its layers, and the
 * embedding or classifier at the ends), or the front's (tokenizer and config only). Loaded once
 * per isolate and piece from the static assets, like model-store.ts loads the whole model.
 *
 * Objects of one class may share an isolate (locally they always do: workerd runs a namespace's
 * objects in one isolate; Cloudflare may co-locate them too). Objects of the same group then share
 * one copy of its weights; only their states are their own.
 */
import { loadModelPart, type LoadedModel, type ModelPart, type PartSpec } from '../../engine/model.js';
import { parseManifest, type Manifest } from '../../model/manifest.js';
import { configOf } from '../config.js';
import { assetReader, getModel, type ModelEnv } from '../model-store.js';

const parts = new Map<string, Promise<ModelPart>>();

/** Loads started in this isolate, by piece key (tests count them: instances of one group in one isolate share one load). */
const loads = new Map<string, number>();

/** How many times this isolate loaded each piece (a failed load that was retried counts twice). */
export function partLoads(): Record<string, number> {
  return Object.fromEntries(loads);
}

async function load(env: ModelEnv, spec: Partial<PartSpec>): Promise<ModelPart> {
  const { modelName: name, load: options, assetReadMbPerS } = configOf(env);
  const read = assetReader(env.ASSETS, assetReadMbPerS);
  const manifest = new TextDecoder().decode(await read(`${name}/manifest.json`));
  return loadModelPart(manifest, (file) => read(`${name}/${file}`), spec, options);
}

function cached(key: string, make: () => Promise<ModelPart>): Promise<ModelPart> {
  let p = parts.get(key);
  if (!p) {
    loads.set(key, (loads.get(key) ?? 0) + 1);
    p = make();
    p.catch(() => parts.delete(key));
    parts.set(key, p);
  }
  return p;
}

const manifests = new Map<string, Promise<Manifest>>();

/** The served model's manifest (read once per isolate): the group layout needs its layer and classifier part counts. */
export function manifestOf(env: ModelEnv): Promise<Manifest> {
  const name = configOf(env).modelName;
  let p = manifests.get(name);
  if (!p) {
    p = (async () =>
      parseManifest(new TextDecoder().decode(await assetReader(env.ASSETS, undefined)(`${name}/manifest.json`))))();
    p.catch(() => manifests.delete(name));
    manifests.set(name, p);
  }
  return p;
}

/** One group's part. */
export function groupModel(env: ModelEnv, spec: PartSpec): Promise<ModelPart> {
  const key = `${configOf(env).modelName}|${spec.layers.start}-${spec.layers.end}|${spec.embed ? 'e' : ''}|${spec.head.join(',')}`;
  return cached(key, () => load(env, spec));
}

/**
 * What the front Worker holds when the layers are split: the tokenizer, the config and the chat
 * template; no weights but the embedding with EMBED_IN_FRONT (src/worker/config.ts). Typed as a LoadedModel so that the job planning and generation code paths
 * stay the same; its steps are run by the chain (chain.ts).
 */
export async function frontModel(env: ModelEnv): Promise<LoadedModel> {
  const { modelName, load: options, split } = configOf(env);
  const embed = split.frontEmbeds;
  // Keyed by the load options too (as model-store.ts keys the whole model): they set the served context.
  const key = `${modelName}|front${embed ? '+e' : ''}|${JSON.stringify(options)}`;
  return (await cached(key, async () =>
    load(env, { layers: { start: 0, end: 0 }, embed, head: [], tokenizer: true }),
  )) as LoadedModel;
}

/**
 * The model as this isolate holds it: the whole model, or with its layers split into `groups`
 * (the Worker's LAYER_GROUPS, or a session's stored split) only the front's pieces.
 */
export function heldModel(env: ModelEnv, groups = configOf(env).split.groups): Promise<LoadedModel> {
  return groups > 1 ? frontModel(env) : getModel(env);
}

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
import type { Env } from '../env.js';
import { embedInFront, type GroupEnv } from './config.js';
import { assetReader, loadOptionsOf, positiveVar, type ModelEnv } from '../model-store.js';

const parts = new Map<string, Promise<ModelPart>>();

async function load(env: ModelEnv, spec: Partial<PartSpec>): Promise<ModelPart> {
  const name = env.MODEL_NAME;
  const read = assetReader(env.ASSETS, positiveVar('ASSET_READ_MB_PER_S', env.ASSET_READ_MB_PER_S));
  const manifest = new TextDecoder().decode(await read(`${name}/manifest.json`));
  return loadModelPart(manifest, (file) => read(`${name}/${file}`), spec, loadOptionsOf(env));
}

function cached(key: string, make: () => Promise<ModelPart>): Promise<ModelPart> {
  let p = parts.get(key);
  if (!p) {
    p = make();
    p.catch(() => parts.delete(key));
    parts.set(key, p);
  }
  return p;
}

const manifests = new Map<string, Promise<Manifest>>();

/** The served model's manifest (read once per isolate): the group layout needs its layer and classifier part counts. */
export function manifestOf(env: ModelEnv): Promise<Manifest> {
  let p = manifests.get(env.MODEL_NAME);
  if (!p) {
    p = (async () =>
      parseManifest(
        new TextDecoder().decode(await assetReader(env.ASSETS, undefined)(`${env.MODEL_NAME}/manifest.json`)),
      ))();
    p.catch(() => manifests.delete(env.MODEL_NAME));
    manifests.set(env.MODEL_NAME, p);
  }
  return p;
}

/** One group's part. */
export function groupModel(env: ModelEnv, spec: PartSpec): Promise<ModelPart> {
  const key = `${env.MODEL_NAME}|${spec.layers.start}-${spec.layers.end}|${spec.embed ? 'e' : ''}|${spec.head.join(',')}`;
  return cached(key, () => load(env, spec));
}

/**
 * What the front Worker holds when the layers are split: the tokenizer, the config and the chat
 * template; no weights but the embedding with EMBED_IN_FRONT (config.ts). Typed as a LoadedModel so that the job planning and generation code paths
 * stay the same; its steps are run by the chain (chain.ts).
 */
export async function frontModel(
  env: Pick<Env, 'ASSETS' | 'MODEL_NAME'> & Partial<Env> & GroupEnv,
): Promise<LoadedModel> {
  const embed = embedInFront(env);
  // Keyed by the load options too (as model-store.ts keys the whole model): they set the served context.
  const key = `${env.MODEL_NAME}|front${embed ? '+e' : ''}|${JSON.stringify(loadOptionsOf(env))}`;
  return (await cached(key, async () =>
    load(env, { layers: { start: 0, end: 0 }, embed, head: [], tokenizer: true }),
  )) as LoadedModel;
}

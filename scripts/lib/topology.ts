/**
 * The multi-Worker topology, generated: from wrangler.toml (the front Worker as it is configured) and
 * topology.json (the split's settings and the group Workers' names), one Worker configuration per
 * layer group and per classifier group plus the front's, each with only its own shards as assets
 * (hard links of model-shards/ files), under an ignored directory (.topology/ by default). Nobody
 * edits those files: scripts/topology.ts writes them, scripts/serve-topology.ts serves them locally,
 * `wrangler deploy --config <dir>/<worker>/wrangler.json` deploys each (groups first).
 */
import { copyFileSync, existsSync, linkSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import {
  parseRuntimeList,
  PLAYGROUND_ASSETS_DIR,
  RUNTIME_LIST,
  servedFiles,
} from '../../src/playground/runtime-files.js';
import { dirname, join, relative, resolve } from 'node:path';
import { experimental_readRawConfig } from 'wrangler';
import { configOf } from '../../src/worker/config.js';
import { placeSplit } from '../../src/engine/layer-group.js';
import { groupBinding } from '../../src/worker/groups/stub.js';
import { parseManifest, type Manifest } from '../../src/model/manifest.js';
import type { PartSpec } from '../../src/engine/model.js';

/** A mistake in the configuration (or a missing build): its message is all the user needs. */
export class TopologyError extends Error {
  override name = 'TopologyError';
}

/** Cloudflare's per-file asset limit. */
export const ASSET_LIMIT_BYTES = 25 * 1024 * 1024;
/** Written in every generated directory: only such a directory is ever emptied by a new generation. */
const MARKER = '.generated-by-scripts-topology';

export interface TopologySettings {
  vars: Record<string, string>;
  workers: {
    group: { name: string; limits?: { cpu_ms?: number } };
    classifier: { name: string; limits?: { cpu_ms?: number } };
    front?: { limits?: { cpu_ms?: number } };
  };
  /** the GGUF kernels each model's shards are built with from the served GGUF (npm run setup and deploy build them) */
  build?: Record<string, string>;
  /** where the models of `build` are built (relative to the repository; default: wrangler.toml's [assets] directory) */
  shards_directory?: string;
}

export interface GeneratedWorker {
  /** the Worker's script name */
  name: string;
  role: 'front' | 'group' | 'classifier';
  /** object index (layer groups first, then classifier groups); null for the front */
  object: number | null;
  /** what it runs, in words */
  description: string;
  /** its generated wrangler.json */
  config: string;
  /** its entry module (the bundle's source) */
  main: string;
  /** its assets: the model files it holds */
  files: string[];
  asset_bytes: number;
  /**
   * the front only: the playground's in-browser runtime among its assets (`_playground/…`, src/playground/
   * runtime-files.ts), linked from wrangler.toml's assets directory when scripts/setup.ts built it
   */
  page_files?: string[];
}

export interface GeneratedTopology {
  generated_by: string;
  source: { wrangler: string; topology: string };
  model: string;
  layer_groups: number;
  classifier_groups: number;
  embed_in_front: boolean;
  vars: Record<string, string>;
  /** in deployment order: every group Worker first (the front's bindings name them), the front last */
  workers: GeneratedWorker[];
}

export interface GenerateOptions {
  /** wrangler.toml (the front Worker's configuration, and the shared settings) */
  wrangler: string;
  /** topology.json */
  topology: string;
  /** where to write (emptied first if a previous generation wrote it) */
  out: string;
  /** NAME=VALUE overrides of the vars, after wrangler.toml's and topology.json's */
  vars?: Record<string, string>;
  /** progress lines */
  progress?: (line: string) => void;
}

type Raw = Record<string, unknown> & {
  name?: string;
  main?: string;
  vars?: Record<string, string>;
  assets?: { directory?: string; binding?: string; run_worker_first?: boolean };
  limits?: { cpu_ms?: number };
  durable_objects?: { bindings?: { name: string; class_name: string; script_name?: string }[] };
  migrations?: unknown[];
};

export function readSettings(path: string): TopologySettings {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    throw new TopologyError(
      `${path}: cannot read the topology settings (expected a JSON file like the committed topology.json)`,
    );
  }
  let s: unknown;
  try {
    s = JSON.parse(text);
  } catch (e) {
    throw new TopologyError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  const o = s as Partial<TopologySettings>;
  if (typeof o !== 'object' || o === null) throw new TopologyError(`${path}: expected a JSON object`);
  if (typeof o.vars !== 'object' || o.vars === null)
    throw new TopologyError(`${path}: "vars" must be an object of NAME: "value"`);
  for (const [k, v] of Object.entries(o.vars))
    if (typeof v !== 'string')
      throw new TopologyError(
        `${path}: vars.${k} must be a string (as in wrangler.toml's [vars]), got ${JSON.stringify(v)}`,
      );
  for (const role of ['group', 'classifier'] as const) {
    const w = o.workers?.[role];
    if (!w || typeof w.name !== 'string' || w.name === '')
      throw new TopologyError(
        `${path}: workers.${role}.name must be a name pattern such as "{front}-${role}-{${role === 'group' ? 'g' : 'k'}}"`,
      );
  }
  for (const role of ['group', 'classifier', 'front'] as const) {
    const cpu = o.workers?.[role]?.limits?.cpu_ms;
    if (cpu !== undefined && !(Number.isInteger(cpu) && cpu > 0 && cpu <= 300_000))
      throw new TopologyError(
        `${path}: workers.${role}.limits.cpu_ms must be an integer from 1 to 300000 (Cloudflare's limit), got ${cpu}`,
      );
  }
  return o as TopologySettings;
}

/** Hard link `from` at `to` (no bytes copied); a copy when they are on different file systems. */
function linkOrCopy(from: string, to: string): 'link' | 'copy' {
  mkdirSync(dirname(to), { recursive: true });
  try {
    linkSync(from, to);
    return 'link';
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    copyFileSync(from, to);
    return 'copy';
  }
}

/** The model files object `spec` holds (besides the manifest). */
function filesOf(m: Manifest, spec: PartSpec): string[] {
  const out: string[] = [];
  if (spec.tokenizer) out.push(m.tokenizer.file);
  if (spec.embed) out.push(...m.files.embed.map((f) => f.file));
  for (let l = spec.layers.start; l < spec.layers.end; l++) out.push(m.files.layers[l].file);
  out.push(...spec.head.map((i) => m.files.head[i].file));
  return out;
}

const fill = (pattern: string, front: string, i: number) =>
  pattern.replaceAll('{front}', front).replaceAll('{g}', String(i)).replaceAll('{k}', String(i));

/** Writes every Worker's configuration and assets under `opts.out`; returns what it wrote. */
export function generateTopology(opts: GenerateOptions): GeneratedTopology {
  const say = opts.progress ?? (() => undefined);
  const wranglerPath = resolve(opts.wrangler);
  if (!existsSync(wranglerPath)) throw new TopologyError(`${opts.wrangler}: no such wrangler configuration`);
  const raw = experimental_readRawConfig({ config: wranglerPath }).rawConfig as Raw;
  const base = dirname(wranglerPath);
  const settings = readSettings(resolve(opts.topology));
  if (!raw.name) throw new TopologyError(`${opts.wrangler}: no "name" (the front Worker's name)`);
  if (!raw.main) throw new TopologyError(`${opts.wrangler}: no "main"`);
  if (!raw.assets?.directory) throw new TopologyError(`${opts.wrangler}: no [assets] directory (the model shards)`);
  if (!raw.durable_objects?.bindings?.some((b) => b.name === 'LAYER_GROUP_OBJECTS'))
    throw new TopologyError(
      `${opts.wrangler}: no LAYER_GROUP_OBJECTS Durable Object binding (the front's fallback LayerGroup class)`,
    );
  const vars: Record<string, string> = { ...(raw.vars ?? {}), ...settings.vars, ...(opts.vars ?? {}) };
  for (const k of Object.keys({ ...settings.vars, ...(opts.vars ?? {}) }))
    if (!(k in (raw.vars ?? {})))
      throw new TopologyError(
        `var ${k} is not one of wrangler.toml's [vars] (${Object.keys(raw.vars ?? {}).join(', ')}): a misspelling?`,
      );
  // The split, as the Workers will read it (the same functions, the same errors).
  let G: number, H: number, embed: boolean;
  try {
    ({ groups: G, heads: H, frontEmbeds: embed } = configOf(vars as Parameters<typeof configOf>[0]).split);
  } catch (e) {
    throw new TopologyError((e as Error).message);
  }
  if (G < 2)
    throw new TopologyError(
      `LAYER_GROUPS is ${G}: the topology splits the layers into Workers, so it needs at least 2 (the unsplit model is plain wrangler.toml: scripts/serve.ts)`,
    );
  const model = vars.MODEL_NAME;
  if (!model) throw new TopologyError('MODEL_NAME is empty');
  // The models topology.json builds live in its shards_directory; any other in wrangler.toml's assets.
  const shardsRoot = resolve(
    base,
    settings.build?.[model] ? (settings.shards_directory ?? raw.assets.directory) : raw.assets.directory,
  );
  const modelDir = join(shardsRoot, model);
  const manifestPath = join(modelDir, 'manifest.json');
  if (!existsSync(manifestPath)) {
    const spec = settings.build?.[model];
    const how =
      spec &&
      `npm run deploy -- --dry-run (it builds them), or npm run shards -- --gguf FILE --kernel ${spec} --name ${model} --out ${settings.shards_directory ?? 'model-shards'}/${model}`;
    throw new TopologyError(
      `${relative(process.cwd(), manifestPath)} does not exist: the shards of ${model} are not built${how ? `; build them with:\n  ${how}` : ' (npm run shards)'}`,
    );
  }
  const manifest = parseManifest(readFileSync(manifestPath, 'utf8'));
  const L = manifest.config.nLayers;
  const P = manifest.files.head.length;
  if (G > L) throw new TopologyError(`LAYER_GROUPS ${G}: ${model} has only ${L} layers`);
  if (H > P)
    throw new TopologyError(
      `HEAD_GROUPS ${H}: ${model}'s classifier is sharded in ${P} part(s), so at most ${P} classifier groups`,
    );

  const out = resolve(opts.out);
  if (existsSync(out)) {
    if (!existsSync(join(out, MARKER)))
      throw new TopologyError(
        `${opts.out} exists and was not written by scripts/topology.ts: choose another --out (nothing was deleted)`,
      );
    rmSync(out, { recursive: true, force: true });
  }
  mkdirSync(out, { recursive: true });
  writeFileSync(
    join(out, MARKER),
    'Generated by scripts/topology.ts from wrangler.toml and topology.json; regenerated, never edited.\n',
  );

  const front = raw.name;
  const frontMain = resolve(base, raw.main);
  const groupMain = resolve(base, 'src/worker/groups/entry.ts');
  const shared = (k: string) => (raw[k] === undefined ? {} : { [k]: raw[k] });
  const workers: GeneratedWorker[] = [];
  let links = 0;
  let copies = 0;
  /** writes a Worker's assets (the manifest and `files`) and its wrangler.json */
  const emit = (
    w: Omit<GeneratedWorker, 'config' | 'asset_bytes'>,
    config: (dir: string) => Record<string, unknown>,
  ) => {
    const dir = join(out, w.name);
    let bytes = 0;
    for (const f of ['manifest.json', ...w.files]) {
      const from = join(modelDir, f);
      if (!existsSync(from))
        throw new TopologyError(
          `${relative(process.cwd(), from)} is listed in ${model}'s manifest but missing: rebuild the shards`,
        );
      const size = statSync(from).size;
      if (size > ASSET_LIMIT_BYTES)
        throw new TopologyError(
          `${f} is ${(size / 2 ** 20).toFixed(1)} MiB: over Cloudflare's 25 MiB per asset (shard it finer)`,
        );
      bytes += size;
      if (linkOrCopy(from, join(dir, 'assets', model, f)) === 'link') links++;
      else copies++;
    }
    const path = join(dir, 'wrangler.json');
    writeFileSync(path, JSON.stringify(config(dir), null, 2) + '\n');
    workers.push({ ...w, config: path, asset_bytes: bytes });
    say(`  ${w.name}: ${w.description}; ${w.files.length + 1} files, ${(bytes / 2 ** 20).toFixed(1)} MiB`);
  };
  const rel = (dir: string, p: string) => relative(dir, p) || '.';
  const assets = { directory: './assets', binding: raw.assets.binding ?? 'ASSETS', run_worker_first: true };

  const placement = placeSplit(L, P, G, H, embed);
  say(
    `${model}: ${L} layers in ${G} layer groups + ${H} classifier groups, embedding in the ${embed ? 'front' : 'first group'}`,
  );
  for (let g = 0; g < G + H; g++) {
    const spec = placement[g];
    const role = g < G ? 'group' : 'classifier';
    const name = fill(settings.workers[role].name, front, g < G ? g : g - G);
    const what =
      g < G
        ? `layer group ${g} (layers ${spec.layers.start}-${spec.layers.end - 1}${spec.embed ? ', the embedding' : ''}${spec.head.length ? ', the classifier' : ''})`
        : `classifier group ${g - G} (classifier parts ${spec.head.join(', ')})`;
    const cpu = settings.workers[role].limits?.cpu_ms;
    emit({ name, role, object: g, description: what, main: groupMain, files: filesOf(manifest, spec) }, (dir) => ({
      name,
      main: rel(dir, groupMain),
      ...shared('compatibility_date'),
      ...shared('compatibility_flags'),
      ...shared('rules'),
      ...(cpu !== undefined ? { limits: { cpu_ms: cpu } } : shared('limits')),
      // reached only through the front's Durable Object binding: no public URL
      workers_dev: false,
      preview_urls: false,
      assets,
      vars: { ...vars, TOPOLOGY_OBJECT: String(g), TOPOLOGY_ROLE: what },
      durable_objects: {
        bindings: [
          { name: 'LAYER_GROUP_OBJECTS', class_name: 'LayerGroup' },
          // a layer group hands each step's frontier on to the next one itself (layer-group-object.ts handOn)
          ...(g < G - 1
            ? [
                {
                  name: groupBinding(g + 1),
                  class_name: 'LayerGroup',
                  script_name: fill(settings.workers.group.name, front, g + 1),
                },
              ]
            : []),
        ],
      },
      migrations: [{ tag: 'v1', new_sqlite_classes: ['LayerGroup'] }],
    }));
  }
  const groupWorkers = [...workers];
  const frontSpec: PartSpec = { layers: { start: 0, end: 0 }, embed, head: [], tokenizer: true };
  const frontCpu = settings.workers.front?.limits?.cpu_ms;
  const frontWhat = `front (HTTP, tokenizer, sessions, sampler${embed ? ', the embedding' : ''})`;
  emit(
    {
      name: front,
      role: 'front',
      object: null,
      description: frontWhat,
      main: frontMain,
      files: filesOf(manifest, frontSpec),
    },
    (dir) => {
      const { $schema: _schema, ...rest } = raw;
      return {
        ...rest,
        main: rel(dir, frontMain),
        ...(frontCpu !== undefined ? { limits: { cpu_ms: frontCpu } } : {}),
        assets: { ...raw.assets, directory: './assets' },
        vars: { ...vars, TOPOLOGY_ROLE: frontWhat },
        durable_objects: {
          bindings: [
            ...(raw.durable_objects?.bindings ?? []).filter((b) => !/^LAYER_GROUP_\d+$/.test(b.name)),
            ...groupWorkers.map((w) => ({
              name: groupBinding(w.object!),
              class_name: 'LayerGroup',
              script_name: w.name,
            })),
          ],
        },
      };
    },
  );
  // The playground's "run in this browser" downloads its engine and onnxruntime's binary from the front.
  const pageDir = resolve(base, raw.assets.directory, PLAYGROUND_ASSETS_DIR);
  const frontWorker = workers[workers.length - 1];
  if (existsSync(join(pageDir, RUNTIME_LIST))) {
    const list = parseRuntimeList(readFileSync(join(pageDir, RUNTIME_LIST), 'utf8'));
    frontWorker.page_files = [RUNTIME_LIST, ...servedFiles(list).map((f) => f.file)].map(
      (f) => `${PLAYGROUND_ASSETS_DIR}/${f}`,
    );
    for (const f of frontWorker.page_files) {
      if (
        linkOrCopy(join(pageDir, f.slice(PLAYGROUND_ASSETS_DIR.length + 1)), join(out, front, 'assets', f)) === 'link'
      )
        links++;
      else copies++;
    }
    say(`  ${front}: the playground's in-browser runtime, ${frontWorker.page_files.length} files`);
  } else say(`  ${front}: no ${relative(process.cwd(), pageDir)} (npm run setup builds it): no "run in this browser"`);
  const topo: GeneratedTopology = {
    generated_by: 'scripts/topology.ts',
    source: { wrangler: wranglerPath, topology: resolve(opts.topology) },
    model,
    layer_groups: G,
    classifier_groups: H,
    embed_in_front: embed,
    vars,
    workers,
  };
  writeFileSync(join(out, 'topology.json'), JSON.stringify(topo, null, 2) + '\n');
  say(
    `${workers.length} Workers written to ${relative(process.cwd(), out) || '.'} (assets: ${links} hard links${copies ? `, ${copies} copies` : ''})`,
  );
  return topo;
}

/** What a previous generation wrote in `dir`. */
/**
 * The order to deploy the Workers in, each after every Worker its bindings name: the classifier
 * groups, the layer groups from the last (each binds the next) to the first, then the front.
 */
export function deployOrder(topo: GeneratedTopology): GeneratedWorker[] {
  return [...topo.workers].sort((a, b) => (b.object ?? -1) - (a.object ?? -1));
}

export function readGenerated(dir: string): GeneratedTopology {
  const path = join(resolve(dir), 'topology.json');
  if (!existsSync(path))
    throw new TopologyError(`${dir}: no generated topology (run: npx tsx scripts/topology.ts --out ${dir})`);
  return JSON.parse(readFileSync(path, 'utf8')) as GeneratedTopology;
}

/** NAME=VALUE (or NAME:VALUE, as scripts/serve.ts takes them) pairs. */
export function parseVars(list: readonly string[]): Record<string, string> {
  const vars: Record<string, string> = {};
  for (const v of list) {
    const at = v.search(/[=:]/);
    if (at <= 0) throw new TopologyError(`--var: expected NAME=VALUE, got ${JSON.stringify(v)}`);
    vars[v.slice(0, at)] = v.slice(at + 1);
  }
  return vars;
}

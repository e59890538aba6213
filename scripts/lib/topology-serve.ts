/**
 * The generated topology (scripts/lib/topology.ts) served locally: every Worker of it, the front and
 * each group Worker, as a Worker of its own in one workerd process (Miniflare's `workers`, as
 * `wrangler dev -c front -c group ...` runs them), so each runs in its own isolate, as deployed.
 *
 * Why Miniflare and not wrangler's API: `unstable_startWorker` starts one Worker per call, each in
 * a workerd process of its own, and the cross-process Durable Object bindings then go through the
 * dev registry; the multi-config runner behind `wrangler dev -c a -c b` (MultiworkerRuntimeController)
 * is not exported, and `wrangler dev` itself attaches the inspector proxy that ran workerd out of
 * file descriptors on SmolLM2's shards (scripts/serve.ts). So: each Worker is bundled as
 * `wrangler deploy --dry-run` bundles it, its bindings come from wrangler
 * (`unstable_getMiniflareWorkerOptions` on its generated configuration), and Miniflare runs them all.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, linkSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { Miniflare, type MiniflareOptions, type WorkerOptions } from 'miniflare';
import { unstable_getMiniflareWorkerOptions } from 'wrangler';
import { REPO_ROOT } from './node-env.js';
import { readGenerated, TopologyError, type GeneratedTopology, type GeneratedWorker } from './topology.js';

export interface ServeTopologyOptions {
  /** the generated topology's directory (scripts/topology.ts --out) */
  dir: string;
  host?: string;
  port?: number;
  /** Durable Object storage directory (default: in memory, gone at stop) */
  persist?: string;
  progress?: (line: string) => void;
}

export interface RunningTopology {
  url: URL;
  mf: Miniflare;
  topology: GeneratedTopology;
  /** a group Worker's own LayerGroup namespace, as the front's binding reaches it */
  namespace(worker: GeneratedWorker): ReturnType<Miniflare['getDurableObjectNamespace']>;
  /** Restarts every Worker (workerd itself): their memory is gone, Durable Object storage stays if persisted. */
  restart(): Promise<void>;
  dispose(): Promise<void>;
}

/** Hard links of every file below `from` at the same paths below `to` (a file already there is kept). */
function linkTree(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  for (const name of readdirSync(from)) {
    const [a, b] = [join(from, name), join(to, name)];
    if (statSync(a).isDirectory()) linkTree(a, b);
    else if (!existsSync(b)) linkSync(a, b);
  }
}

/** Bundles each distinct entry module once, as `wrangler deploy --dry-run` would for the first Worker using it. */
function bundle(topo: GeneratedTopology, dir: string, say: (l: string) => void): Map<string, string> {
  const out = new Map<string, string>();
  for (const w of topo.workers) {
    if (out.has(w.main)) continue;
    const build = join(dir, '.build', w.name);
    mkdirSync(build, { recursive: true });
    say(`bundling ${basename(w.main)} (${w.name}) with wrangler deploy --dry-run ...`);
    const r = spawnSync(
      process.execPath,
      [
        join(REPO_ROOT, 'node_modules/wrangler/bin/wrangler.js'),
        'deploy',
        '--dry-run',
        '--outdir',
        build,
        '--config',
        w.config,
      ],
      {
        cwd: REPO_ROOT,
        encoding: 'utf8',
        env: { ...process.env, WRANGLER_SEND_METRICS: 'false', NO_COLOR: '1', WRANGLER_HIDE_BANNER: 'true' },
      },
    );
    if (r.status !== 0)
      throw new TopologyError(`wrangler deploy --dry-run --config ${w.config} failed:\n${r.stderr || r.stdout}`);
    const entry = join(build, basename(w.main).replace(/\.[cm]?[jt]s$/, '.js'));
    if (!existsSync(entry)) throw new TopologyError(`wrangler's bundle of ${w.main} has no ${entry}`);
    out.set(w.main, entry);
  }
  return out;
}

/** Miniflare options of one generated Worker: wrangler's view of its configuration, run from its bundle. */
function workerOptions(w: GeneratedWorker, entry: string, topo: GeneratedTopology): WorkerOptions {
  const { workerOptions: o } = unstable_getMiniflareWorkerOptions(w.config);
  // The modules listed, not located: Miniflare's locator refuses the bundle's dynamic import()s
  // (ERR_MODULE_DYNAMIC_SPEC), which never run here (onnxruntime-web's optional paths).
  const root = dirname(entry);
  const typeOf = (f: string) =>
    f.endsWith('.wasm') ? 'CompiledWasm' : f.endsWith('.html') ? 'Text' : /\.m?js$/.test(f) ? 'ESModule' : null;
  const others = readdirSync(root).filter((f) => join(root, f) !== entry && typeOf(f) !== null);
  const modules = [entry, ...others.map((f) => join(root, f))].map((path) => ({ type: typeOf(path)!, path }));
  const opts = { ...o, name: w.name, modules, modulesRoot: root } as WorkerOptions;
  // A binding to another script's class does not know that class is SQLite-backed (its migration is in
  // the other configuration); Miniflare refuses two views of one class that disagree.
  const groupScripts = new Set(topo.workers.filter((x) => x.role !== 'front').map((x) => x.name));
  const dos = (opts as { durableObjects?: Record<string, unknown> }).durableObjects ?? {};
  for (const [k, v] of Object.entries(dos))
    if (typeof v === 'object' && v !== null && groupScripts.has((v as { scriptName?: string }).scriptName ?? ''))
      dos[k] = { ...(v as object), useSQLite: true };
  return opts;
}

export async function serveTopology(opts: ServeTopologyOptions): Promise<RunningTopology> {
  const say = opts.progress ?? (() => undefined);
  const dir = resolve(opts.dir);
  const topo = readGenerated(dir);
  const entries = bundle(topo, dir, say);
  const front = topo.workers.find((w) => w.role === 'front');
  if (!front) throw new TopologyError(`${dir}: the generated topology has no front Worker`);
  // The front first: Miniflare's entry socket serves the first Worker.
  const order = [front, ...topo.workers.filter((w) => w !== front)];
  const workers = order.map((w) => workerOptions(w, entries.get(w.main)!, topo));
  // Miniflare (4.x, as wrangler 4.86 ships it) names every Worker's asset storage service
  // "assets:storage" and keeps the first: every Worker's asset manifest is its own (a group Worker
  // finds only its shards, 404 for the others), but the bytes are read from the first Worker's
  // directory. So the front, first, is served locally from the union of every Worker's assets
  // (hard links): locally the front could read a group's shard (it never asks for one); deployed,
  // its assets are only its own (DIR/<front>/assets).
  const union = join(dir, '.build', 'local-assets-union');
  rmSync(union, { recursive: true, force: true });
  for (const w of topo.workers) linkTree(join(dirname(w.config), 'assets'), union);
  (workers[0] as { assets: { directory: string } }).assets.directory = union;
  const options: MiniflareOptions = {
    host: opts.host ?? '127.0.0.1',
    port: opts.port ?? 8787,
    ...(opts.persist ? { defaultPersistRoot: resolve(opts.persist) } : {}),
    workers,
  } as MiniflareOptions;
  say(`starting ${order.length} Workers in workerd ...`);
  const mf = new Miniflare(options);
  const url = await mf.ready;
  return {
    url,
    mf,
    topology: topo,
    namespace: (w) => mf.getDurableObjectNamespace('LAYER_GROUP_OBJECTS', w.name),
    restart: () => mf.setOptions(options),
    dispose: () => mf.dispose(),
  };
}

/**
 * npm run deploy [-- --dry-run] [--out .topology] [--var NAME=VALUE]...
 *
 * Deploys the multi-Worker topology (docs/TOPOLOGY.md, docs/DEPLOY.md) in order: builds the
 * topology's shards when they are missing (from the GGUF the set-up locates), generates every
 * Worker's configuration (scripts/lib/topology.ts), then `wrangler deploy`s each Worker after the
 * ones its bindings name (deployOrder: the classifier groups, the layer groups from the last to the
 * first, each binding the next, then the front). With --dry-run nothing is uploaded: each Worker is
 * bundled as it would be and checked against Cloudflare's limits (64 MiB per script bundle,
 * 25 MiB per asset, and only that Worker's own shards among its assets, plus the playground's
 * in-browser runtime for the front). Exits non-zero, with the
 * reason, on the first Worker that fails.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { progress, REPO_ROOT, runMain } from './lib/node-env.js';
import { ensureTopologyShards } from './lib/shard-tasks.js';
import { buildPlaygroundAssets } from './lib/playground-assets.js';
import { ASSET_LIMIT_BYTES, deployOrder, generateTopology, parseVars, TopologyError } from './lib/topology.js';

/** Cloudflare's limit on a Worker's script bundle (paid plan, uncompressed as wrangler measures it here). */
const BUNDLE_LIMIT_BYTES = 64 * 1024 * 1024;
const MIB = 1024 * 1024;

const USAGE = `usage: npm run deploy -- [--dry-run] [--out .topology] [--var NAME=VALUE]...

Builds the topology's shards if missing, generates one Worker per layer group and classifier group
plus the front (wrangler.toml + topology.json), then wrangler-deploys each group Worker and the front.
  --dry-run         bundle and check every Worker against Cloudflare's limits; upload nothing
  --out DIR         where the configurations are generated (default .topology)
  --var NAME=VALUE  override a var in every Worker (repeatable)`;

function fail(message: string): never {
  process.stderr.write(`deploy: ${message}\n`);
  process.exit(2);
}

function parseCli() {
  try {
    return parseArgs({
      options: {
        'dry-run': { type: 'boolean', default: false },
        out: { type: 'string', default: '.topology' },
        var: { type: 'string', multiple: true, default: [] },
        help: { type: 'boolean', default: false },
      },
      strict: true,
    }).values;
  } catch (e) {
    fail(`${(e as Error).message}\n${USAGE}`);
  }
}

const args = parseCli();
if (args.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return (
    readdirSync(dir, { recursive: true, withFileTypes: true })
      .filter((e) => e.isFile())
      // parentPath from Node 20.12; `path` before it
      .map((e) => join((e as { parentPath?: string }).parentPath ?? e.path, e.name))
  );
}

function wrangler(argv: string[]): void {
  const r = spawnSync(process.execPath, [join(REPO_ROOT, 'node_modules/wrangler/bin/wrangler.js'), ...argv], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    env: { ...process.env, WRANGLER_SEND_METRICS: 'false', NO_COLOR: '1' },
  });
  if (r.status !== 0) throw new TopologyError(`wrangler ${argv.join(' ')} failed:\n${r.stderr || r.stdout}`);
}

async function main(): Promise<void> {
  const vars = parseVars(args.var);
  // The topology's own shards (topology.json); a --var MODEL_NAME names shards built elsewhere.
  if (vars.MODEL_NAME === undefined) await ensureTopologyShards(progress);
  // the playground's in-browser runtime, which the front serves from its assets
  await buildPlaygroundAssets();
  const out = join(REPO_ROOT, args.out);
  const topo = generateTopology({
    wrangler: join(REPO_ROOT, 'wrangler.toml'),
    topology: join(REPO_ROOT, 'topology.json'),
    out,
    vars,
    progress,
  });
  const rows: string[] = [];
  for (const w of deployOrder(topo)) {
    const dir = join(out, w.name);
    if (args['dry-run']) {
      const bundleDir = join(dir, 'bundle');
      mkdirSync(bundleDir, { recursive: true });
      progress(`${w.name}: wrangler deploy --dry-run ...`);
      wrangler(['deploy', '--dry-run', '--outdir', bundleDir, '--config', w.config]);
      const bundle = filesUnder(bundleDir).reduce((s, f) => s + statSync(f).size, 0);
      if (bundle > BUNDLE_LIMIT_BYTES)
        throw new TopologyError(`${w.name}: its bundle is ${(bundle / MIB).toFixed(1)} MiB, over the 64 MiB limit`);
      const assets = filesUnder(join(dir, 'assets'));
      const big = assets.find((f) => statSync(f).size > ASSET_LIMIT_BYTES);
      if (big) throw new TopologyError(`${w.name}: asset ${relative(dir, big)} is over the 25 MiB limit`);
      const own = new Set([
        ...['manifest.json', ...w.files].map((f) => join(dir, 'assets', topo.model, f)),
        ...(w.page_files ?? []).map((f) => join(dir, 'assets', f)),
      ]);
      const foreign = assets.filter((f) => !own.has(f));
      if (foreign.length)
        throw new TopologyError(
          `${w.name}: assets that are not its own shards: ${foreign.map((f) => relative(dir, f))}`,
        );
      rows.push(
        `${w.name.padEnd(28)} ${w.role.padEnd(10)} bundle ${(bundle / MIB).toFixed(1).padStart(5)} MiB   ` +
          `${String(assets.length).padStart(3)} assets, ${(w.asset_bytes / MIB).toFixed(1).padStart(5)} MiB` +
          (w.page_files ? ` + the playground's runtime (${w.page_files.length} files)` : ''),
      );
    } else {
      progress(`${w.name}: wrangler deploy ...`);
      wrangler(['deploy', '--config', w.config]);
      rows.push(`${w.name}: deployed`);
    }
  }
  process.stdout.write(`${rows.join('\n')}\n`);
  process.stdout.write(
    args['dry-run']
      ? `deploy --dry-run: ${topo.workers.length} Workers bundled and within Cloudflare's limits\n`
      : `deployed ${topo.workers.length} Workers; check GET /healthz on the front\n`,
  );
}

runMain(async () => {
  try {
    await main();
  } catch (e) {
    if (e instanceof TopologyError) fail(e.message);
    throw e;
  }
});

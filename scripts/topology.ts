/**
 * npx tsx scripts/topology.ts [--config wrangler.toml] [--topology topology.json] [--out .topology] [--var NAME=VALUE]...
 *
 * Generates the multi-Worker topology (scripts/lib/topology.ts): one Worker per layer group and per
 * classifier group, each with its own LayerGroup Durable Object class and only its own shards as
 * assets (hard links), and the front Worker binding each by script_name; every configuration under
 * --out (ignored by git), written afresh each run. Serve it locally with scripts/serve-topology.ts.
 */
import { parseArgs } from 'node:util';
import { generateTopology, parseVars, TopologyError } from './lib/topology.js';

const USAGE = `usage: npx tsx scripts/topology.ts [options]

Generates one Worker configuration per layer group and per classifier group, and the front's,
from wrangler.toml and topology.json, into --out (emptied first; only a directory this script wrote).

  --config FILE     the front Worker's wrangler configuration (default wrangler.toml)
  --topology FILE   the split's settings and the group Workers' names (default topology.json)
  --out DIR         where to write (default .topology)
  --var NAME=VALUE  override one of wrangler.toml's [vars] in every Worker (repeatable), after topology.json
  --help            this text

Deploy: wrangler deploy --config DIR/<worker>/wrangler.json for every group Worker, then the front
(DIR/topology.json lists them in that order). Serve locally: npx tsx scripts/serve-topology.ts.`;

function fail(message: string): never {
  process.stderr.write(`topology: ${message}\n`);
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    options: {
      config: { type: 'string', default: 'wrangler.toml' },
      topology: { type: 'string', default: 'topology.json' },
      out: { type: 'string', default: '.topology' },
      var: { type: 'string', multiple: true, default: [] },
      help: { type: 'boolean', default: false },
    },
    strict: true,
    allowPositionals: false,
  }).values;
} catch (e) {
  fail(`${(e as Error).message}\n${USAGE}`);
}
if (args.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

try {
  const topo = generateTopology({
    wrangler: args.config,
    topology: args.topology,
    out: args.out,
    vars: parseVars(args.var),
    progress: (line) => process.stderr.write(`${line}\n`),
  });
  process.stdout.write(`${JSON.stringify({ out: args.out, workers: topo.workers.map((w) => w.name) })}\n`);
} catch (e) {
  if (e instanceof TopologyError) fail(e.message);
  throw e;
}

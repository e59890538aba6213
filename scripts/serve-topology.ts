/**
 * The multi-Worker topology served locally: generates it (scripts/topology.ts, unless --no-generate),
 * bundles each Worker as `wrangler deploy --dry-run` does, and runs the front and every group Worker
 * in workerd, each Worker in its own isolate (scripts/lib/topology-serve.ts).
 *
 *   npx tsx scripts/serve-topology.ts [--out .topology] [--var NAME=VALUE]... [--ip 127.0.0.1] [--port 8787] [--persist-to DIR]
 */
import { parseArgs } from 'node:util';
import { generateTopology, parseVars, TopologyError } from './lib/topology.js';
import { serveTopology } from './lib/topology-serve.js';

const USAGE = `usage: npx tsx scripts/serve-topology.ts [options]

Serves the multi-Worker topology locally: the front Worker and one Worker per layer group and per
classifier group, each in its own isolate in one workerd process.

  --config FILE      the front's wrangler configuration (default wrangler.toml)
  --topology FILE    the split's settings (default topology.json)
  --out DIR          the generated topology (default .topology; regenerated unless --no-generate)
  --no-generate      serve DIR as it is
  --var NAME=VALUE   override one of wrangler.toml's [vars] in every Worker (repeatable)
  --ip IP            (default 127.0.0.1)
  --port N           (default 8787)
  --persist-to DIR   keep Durable Object storage there (default: in memory)
  --help             this text`;

function fail(message: string): never {
  process.stderr.write(`serve-topology: ${message}\n`);
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    options: {
      config: { type: 'string', default: 'wrangler.toml' },
      topology: { type: 'string', default: 'topology.json' },
      out: { type: 'string', default: '.topology' },
      'no-generate': { type: 'boolean', default: false },
      var: { type: 'string', multiple: true, default: [] },
      ip: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8787' },
      'persist-to': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  }).values;
} catch (e) {
  fail(`${(e as Error).message}\n${USAGE}`);
}
if (args.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535)
  fail(`--port: expected a port number, got ${JSON.stringify(args.port)}`);
if (args['no-generate'] && args.var.length > 0) fail('--var needs a generation: drop --no-generate');
// Request.cf is fetched from Cloudflare by default; nothing here goes to the network.
process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= 'false';

const progress = (line: string) => process.stderr.write(`serve-topology: ${line}\n`);
let running: Awaited<ReturnType<typeof serveTopology>>;
try {
  if (!args['no-generate'])
    generateTopology({
      wrangler: args.config,
      topology: args.topology,
      out: args.out,
      vars: parseVars(args.var),
      progress,
    });
  running = await serveTopology({
    dir: args.out,
    host: args.ip,
    port,
    ...(args['persist-to'] !== undefined ? { persist: args['persist-to'] } : {}),
    progress,
  });
} catch (e) {
  if (e instanceof TopologyError) fail(e.message);
  throw e;
}
process.stdout.write(
  `serve-topology: ready on ${running.url.href} (${running.topology.workers.map((w) => w.name).join(', ')})\n`,
);

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await running.dispose();
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);

/**
 * The Worker served locally in workerd, as `wrangler dev` serves it but without its inspector:
 *
 *   tsx scripts/serve.ts [--config wrangler.toml] [--ip 127.0.0.1] [--port 8787] [--persist-to DIR] [--var NAME:VALUE]...
 *
 * Why not `wrangler dev`: it always attaches an inspector proxy that enables the runtime's Network
 * domain, so every ~4 KB chunk of a shard read from ASSETS becomes a devtools event, and wrangler
 * forwards each event to its Node process on a new loopback connection that stays in CLOSE-WAIT.
 * Loading SmolLM2's 139 MB of shards opened ~20,000 of them and workerd ran out of descriptors
 * (issue 16). With the inspector off, the same load holds ~30 descriptors. Nor does this server
 * rebuild when a source file changes (a reload restarts every Durable Object mid-request); wrangler
 * 4.86 still watches the assets directory whatever `watch` says, so rebuilding a served model's
 * shards does reload it (measurements run a frozen snapshot: scripts/lib/wrangler-dev.ts).
 * Debugging with devtools still works through plain `npx wrangler dev`, for small models.
 */
import { parseArgs } from 'node:util';
import { unstable_startWorker } from 'wrangler';

function fail(message: string): never {
  process.stderr.write(`serve: ${message}\n`);
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    options: {
      config: { type: 'string', default: 'wrangler.toml' },
      ip: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8787' },
      'persist-to': { type: 'string' },
      var: { type: 'string', multiple: true, default: [] },
    },
    strict: true,
  }).values;
} catch (e) {
  fail(
    `${(e as Error).message}\nusage: tsx scripts/serve.ts [--config FILE] [--ip IP] [--port N] [--persist-to DIR] [--var NAME:VALUE]...`,
  );
}

const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535)
  fail(`--port: expected a port number, got ${JSON.stringify(args.port)}`);
const bindings: Record<string, { type: 'plain_text'; value: string }> = {};
for (const v of args.var) {
  const at = v.indexOf(':');
  if (at <= 0) fail(`--var: expected NAME:VALUE, got ${JSON.stringify(v)}`);
  bindings[v.slice(0, at)] = { type: 'plain_text', value: v.slice(at + 1) };
}
// Request.cf is fetched from Cloudflare by default; nothing here goes to the network.
process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= 'false';

const worker = await unstable_startWorker({
  config: args.config,
  bindings,
  dev: {
    remote: false,
    inspector: false,
    watch: false,
    server: { hostname: args.ip, port },
    ...(args['persist-to'] !== undefined ? { persist: args['persist-to'] } : {}),
  },
});
await worker.ready;
process.stdout.write(`serve: ready on ${String(await worker.url)}\n`);

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await worker.dispose();
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);

/**
 * Memory measured in the multi-Worker topology itself, inside each isolate: serves the generated
 * topology locally (scripts/lib/topology-serve.ts), loads it with one short request, then sends
 * dense chat requests of about N prompt tokens (one, or --concurrent of them at once, each on its
 * own chain), and meanwhile polls every group Worker's instances of every chain with topologyProbe()
 * (src/worker/groups/entry.ts): onnxruntime's wasm memory in that Worker's isolate (a high-water
 * mark: wasm memory never shrinks), what each instance's state holds, the isolate's loads.
 *
 *   npx tsx scripts/topology-memory.ts [--tokens 2000,8000] [--concurrent 1 | --sessions N[,N...]] [--var NAME=VALUE]... [--out .topology-memory] [--port 8950]
 *
 * --sessions N: instead, N chat sessions each take one turn of about N prompt tokens, one after the
 * other (each session's group instances are hosted by the group Workers' isolates beside the others'),
 * and every isolate is probed after each. --sessions N,M,...: that many sessions for each --tokens
 * entry in turn (every session stays, so the later lengths' isolates host the earlier ones too). The output also gives, from the engine's estimate, how many
 * sessions' states of each length one group isolate can host (isolate-room.ts refuses the next one);
 * --room-only prints that alone, without serving.
 *
 * Prints one line per phase and worker, then the whole as JSON on stdout. For 8k prompts pass
 * --var CONTEXT_TOKENS=8192 --var REQUEST_BUDGET_MS=1800000.
 */
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { freePortIn } from './lib/port-range.js';
import { REPO_ROOT } from './lib/node-env.js';
import {
  generateTopology,
  parseVars,
  TopologyError,
  type GeneratedTopology,
  type GeneratedWorker,
} from './lib/topology.js';
import { serveTopology } from './lib/topology-serve.js';
import type { TopologyProbe } from '../src/worker/groups/entry.js';
import { groupState, planSplit } from '../src/engine/layer-group.js';
import type { KvFormat } from '../src/engine/kv-rows.js';
import { parseManifest, quantOf } from '../src/model/manifest.js';
import { fixedBytes } from '../src/worker/groups/isolate-room.js';

const USAGE =
  'usage: npx tsx scripts/topology-memory.ts [--tokens 2000,8000] [--concurrent N | --sessions N[,N...]] [--lazy] [--room-only] [--max-tokens 4] [--var NAME=VALUE]... [--out DIR] [--port N] [--data FILE,...]';

function fail(message: string): never {
  process.stderr.write(`topology-memory: ${message}\n`);
  process.exit(2);
}

function parse() {
  return parseArgs({
    options: {
      tokens: { type: 'string', default: '2000' },
      concurrent: { type: 'string', default: '1' },
      sessions: { type: 'string', default: '0' },
      lazy: { type: 'boolean', default: false },
      'room-only': { type: 'boolean', default: false },
      'max-tokens': { type: 'string', default: '4' },
      var: { type: 'string', multiple: true, default: [] },
      out: { type: 'string', default: '.topology-memory' },
      port: { type: 'string' },
      data: {
        type: 'string',
        default: ['apache-2.0.txt', 'lgpl-2.1.txt', 'mpl-2.0.txt']
          .map((f) => resolve(REPO_ROOT, '../shared/data', f))
          .join(','),
      },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  }).values;
}
let parsed: ReturnType<typeof parse> | undefined;
try {
  parsed = parse();
} catch (e) {
  fail(`${(e as Error).message}\n${USAGE}`);
}
const args = parsed;
if (args.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const tokenCounts = args.tokens.split(',').map(Number);
if (tokenCounts.some((n) => !Number.isInteger(n) || n < 1))
  fail(`--tokens: expected positive integers, got ${args.tokens}`);
const concurrent = Number(args.concurrent);
if (!Number.isInteger(concurrent) || concurrent < 1)
  fail(`--concurrent: expected a positive integer, got ${args.concurrent}`);
const sessionCounts = args.sessions.split(',').map(Number);
if (sessionCounts.some((n) => !Number.isInteger(n) || n < 0))
  fail(`--sessions: expected integers >= 0, got ${args.sessions}`);
if (sessionCounts.length !== 1 && sessionCounts.length !== tokenCounts.length)
  fail(`--sessions: one count, or one per --tokens entry (${tokenCounts.length}), got ${args.sessions}`);
/** how many sessions take a turn of the i-th --tokens length (0: stateless requests instead) */
const sessionsAt = (i: number) => sessionCounts[sessionCounts.length === 1 ? 0 : i];
const sessions = Math.max(...sessionCounts);
if (sessions > 0 && sessionCounts.some((n) => n === 0))
  fail(`--sessions: a count of 0 (stateless requests) mixed with sessions: ${args.sessions}`);
if (sessions > 0 && concurrent > 1) fail('--sessions and --concurrent: one or the other');
const say = (l: string) => process.stderr.write(`topology-memory: ${l}\n`);
process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= 'false';

const MiB = 2 ** 20;

/**
 * From the engine's estimate, as each group Worker's isolate-room.ts counts it: what a layer group's
 * isolate holds whatever it hosts, one state of each --tokens length (dense: KV rows only; lazy: an
 * Aux entry per token at most), and how many such states fit its budget beside the fixed bytes.
 */
function roomTable(topo: GeneratedTopology) {
  const front = topo.workers.find((w) => w.role === 'front')!;
  const manifest = parseManifest(
    readFileSync(join(dirname(front.config), 'assets', topo.model, 'manifest.json'), 'utf8'),
  );
  const v = topo.vars;
  const cfg = {
    ...manifest.config,
    seqLen: Math.min(manifest.config.seqLen, Number(v.CONTEXT_TOKENS ?? 2048)),
    kvFormat: (v.KV_FORMAT ?? 'f32') as KvFormat,
  };
  const headRows = manifest.files.head.map((p) => p.rows);
  const budget = Number(v.MEMORY_BUDGET_MB) * MiB;
  const G = topo.layer_groups;
  return planSplit(cfg, quantOf(manifest), headRows, G, topo.classifier_groups, topo.embed_in_front)
    .slice(0, G)
    .map((part, object) => {
      const fixed = fixedBytes(part.bytes);
      const fresh = groupState(cfg, part.layers);
      return {
        object,
        layers: `${part.layers.start}-${part.layers.end - 1}`,
        fixed_mb: fixed / MiB,
        by_tokens: tokenCounts.map((tokens) => {
          const dense = fresh.bytesAt(tokens, false);
          const lazy = fresh.bytesAt(tokens, true);
          return {
            tokens,
            state_mb: { dense: dense / MiB, lazy: lazy / MiB },
            fit: { dense: Math.floor((budget - fixed) / dense), lazy: Math.floor((budget - fixed) / lazy) },
          };
        }),
      };
    });
}

function sayRoom(room: ReturnType<typeof roomTable>): void {
  for (const r of room)
    say(
      `room: object ${r.object}: ${r.fixed_mb.toFixed(1)} MiB fixed; ${r.by_tokens.map((b) => `${b.tokens} tokens: ${b.state_mb.dense.toFixed(2)} / ${b.state_mb.lazy.toFixed(2)} MiB a state, ${b.fit.dense} / ${b.fit.lazy} states (dense / lazy)`).join('; ')}`,
    );
}

let topo;
try {
  const gen = generateTopology({
    wrangler: join(REPO_ROOT, 'wrangler.toml'),
    topology: join(REPO_ROOT, 'topology.json'),
    out: args.out,
    vars: parseVars(args.var),
    progress: say,
  });
  if (args['room-only']) {
    const room = roomTable(gen);
    sayRoom(room);
    process.stdout.write(`${JSON.stringify({ model: gen.model, vars: gen.vars, room })}\n`);
    process.exit(0);
  }
  const chains = Number(gen.vars.GROUP_CHAINS ?? '2');
  if (concurrent > chains) fail(`--concurrent ${concurrent}: the topology has ${chains} chains (GROUP_CHAINS)`);
  const port = args.port !== undefined ? Number(args.port) : await freePortIn(8940, 8969);
  topo = await serveTopology({ dir: args.out, port, progress: say });
} catch (e) {
  if (e instanceof TopologyError) fail(e.message);
  throw e;
}
const t = topo;
const G = t.topology.layer_groups;
const H = t.topology.classifier_groups;
const C = Number(t.topology.vars.GROUP_CHAINS ?? '2');
const model = t.topology.model;
const groups = t.topology.workers.filter((w) => w.role !== 'front');

type Rpc = { topologyProbe(): Promise<TopologyProbe> };
const stubs = new Map<string, Rpc[]>();
for (const w of groups) {
  const ns = await t.namespace(w);
  stubs.set(
    w.name,
    Array.from({ length: C }, (_, c) => ns.get(ns.idFromName(`pool/${c}/${G}+${H}/${w.object}`)) as unknown as Rpc),
  );
}

interface WorkerFigures {
  worker: string;
  isolate: string;
  wasm_mb: number | null;
  /** per chain instance: tokens, KV and Aux bytes held (the largest seen while polling) */
  instances: { tokens: number; kv_mb: number; aux_mb: number }[];
  loads: Record<string, number>;
  /** every state the isolate's instances hold (the largest seen) */
  hosted_states: number;
  hosted_mb: number;
}

/** Polls every group Worker's instances until `done`, keeping each figure's largest value. */
async function watch(done: Promise<unknown>): Promise<WorkerFigures[]> {
  const best = new Map<string, WorkerFigures>();
  let finished = false;
  let rounds = 0;
  const t0 = performance.now();
  done.then(
    () => (finished = true),
    () => (finished = true),
  );
  for (;;) {
    await Promise.all(
      groups.map(async (w: GeneratedWorker) => {
        const probes = await Promise.all(stubs.get(w.name)!.map((s) => s.topologyProbe()));
        const prev = best.get(w.name);
        best.set(w.name, {
          worker: w.name,
          isolate: probes[0].isolate,
          wasm_mb: Math.max(prev?.wasm_mb ?? 0, ...probes.map((p) => (p.wasm_heap_bytes ?? 0) / MiB)) || null,
          instances: probes.map((p, c) => ({
            tokens: Math.max(prev?.instances[c].tokens ?? 0, p.tokens),
            kv_mb: Math.max(prev?.instances[c].kv_mb ?? 0, p.kv_bytes / MiB),
            aux_mb: Math.max(prev?.instances[c].aux_mb ?? 0, p.aux_bytes / MiB),
          })),
          loads: probes[0].loads,
          hosted_states: Math.max(prev?.hosted_states ?? 0, probes[0].hosted_states),
          hosted_mb: Math.max(prev?.hosted_mb ?? 0, probes[0].hosted_bytes / MiB),
        });
        if (new Set(probes.map((p) => p.isolate)).size !== 1)
          throw new Error(`${w.name}: its chains' instances answered from different isolates`);
      }),
    );
    if (finished) break;
    if (++rounds % 20 === 0) say(`  ... ${rounds} probe rounds, ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    await new Promise((r) => setTimeout(r, 500));
  }
  return [...best.values()];
}

const text = args.data
  .split(',')
  .map((f) => readFileSync(f, 'utf8'))
  .join('\n\n')
  .replace(/\s+/g, ' ');

/**
 * POSTs JSON and reads the JSON answer with no client-side timeout: the first request loads every
 * group Worker before the front answers anything, which took over undici's 300 s headers timeout
 * (fetch's) on a loaded 2-core machine.
 */
function post(url: URL, body: object): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', headers: { 'Content-Type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
        } catch (e) {
          reject(e as Error);
        }
      });
      res.on('error', reject);
      res.on('close', () => {
        if (!res.complete) reject(new Error(`${url.pathname}: the connection closed before the answer was complete`));
      });
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/** A chat request of about `tokens` prompt tokens: stateless, or a turn of the session `session`. */
async function chat(
  tokens: number,
  session?: string,
): Promise<{ prompt_tokens: number; ms: number; text: string; chain?: number }> {
  const chars = Math.round(tokens * 4.4);
  if (text.length < chars)
    fail(`--data: ${text.length} characters, about ${Math.floor(text.length / 4.4)} tokens; ${tokens} asked`);
  const content = `${text.slice(0, chars)}\n\nIn one sentence: what does this license let people do?`;
  const options = {
    max_tokens: Number(args['max-tokens']),
    temperature: 0,
    ...(args.lazy ? {} : { lazy: { enabled: false } }),
  };
  const t0 = performance.now();
  const res = session
    ? await post(new URL(`/v1/sessions/${session}/messages`, t.url), { content, ...options })
    : await post(new URL('/v1/chat/completions', t.url), { model, messages: [{ role: 'user', content }], ...options });
  const body = res.body as {
    usage?: { prompt_tokens: number };
    choices?: { message: { content: string } }[];
    lazy_stats?: { split?: { chain?: number } };
    error?: { message: string };
  };
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${body.error?.message ?? JSON.stringify(body)}`);
  say(
    `  a request of ${body.usage!.prompt_tokens} prompt tokens answered in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  return {
    prompt_tokens: body.usage!.prompt_tokens,
    ms: performance.now() - t0,
    text: body.choices![0].message.content,
    chain: body.lazy_stats?.split?.chain,
  };
}

const phases: { phase: string; requests: unknown[]; workers: WorkerFigures[] }[] = [];
function report(phase: string, requests: unknown[], workers: WorkerFigures[]) {
  phases.push({ phase, requests, workers });
  for (const w of workers)
    say(
      `${phase}: ${w.worker}: wasm ${w.wasm_mb?.toFixed(1) ?? '-'} MiB; hosted ${w.hosted_states} states, ${w.hosted_mb.toFixed(1)} MiB; instances ${w.instances.map((i) => `${i.tokens} tok, KV ${i.kv_mb.toFixed(1)} + Aux ${i.aux_mb.toFixed(1)} MiB`).join(' | ')}; loads ${JSON.stringify(Object.values(w.loads))}`,
    );
}

try {
  say('load: one short request');
  // Probed once it answered: a probe waits while its instance loads (onnxruntime's compilation holds the isolate).
  const load = await chat(16);
  report('load (one short request)', [load], await watch(Promise.resolve()));
  for (const [i, n] of tokenCounts.entries()) {
    if (sessions > 0) {
      const count = sessionsAt(i);
      for (let k = 1; k <= count; k++) {
        say(`session ${k} of ${count}: one turn of ~${n} prompt tokens ...`);
        const id = ((await post(new URL('/v1/sessions', t.url), {})).body as { id: string }).id;
        const turn = chat(n, id);
        const figures = await watch(turn);
        report(`${n} tokens, session ${k} of ${count}`, [await turn], figures);
      }
      continue;
    }
    say(`${concurrent} request(s) of ~${n} prompt tokens ...`);
    const reqs = Promise.all(Array.from({ length: concurrent }, () => chat(n)));
    const figures = await watch(reqs);
    report(`${n} tokens x ${concurrent}`, await reqs, figures);
  }
  const health = await (await fetch(new URL('/healthz', t.url))).json();
  const room = roomTable(t.topology);
  sayRoom(room);
  process.stdout.write(`${JSON.stringify({ model, vars: t.topology.vars, phases, room, front_healthz: health })}\n`);
} finally {
  await t.dispose();
}

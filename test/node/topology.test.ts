/**
 * The multi-Worker topology (scripts/topology.ts, scripts/serve-topology.ts) on stories260K, served
 * in local workerd as generated: the front Worker plus one Worker per layer group and per classifier
 * group, each with its own LayerGroup class and only its own shards. Each group Worker runs in an
 * isolate of its own (the isolate probe, read inside each); dense and lazy requests give the unsplit
 * Worker's tokens; two chains' instances of one group, hosted by that group's isolate, share one
 * load of its weights (the isolate's load counter).
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../scripts/lib/node-env.js';
import { freePortIn } from '../../scripts/lib/port-range.js';
import { deployOrder, generateTopology, TopologyError, type GeneratedWorker } from '../../scripts/lib/topology.js';
import { serveTopology, type RunningTopology } from '../../scripts/lib/topology-serve.js';
import { killGroup, spawnServe, waitReady } from '../../scripts/lib/wrangler-dev.js';
import type { TopologyProbe } from '../../src/worker/groups/entry.js';
import type { GroupAddress, Result } from '../../src/worker/groups/types.js';
import { groupState, planSplit } from '../../src/engine/layer-group.js';
import { MB } from '../../src/engine/memory-budget.js';
import { parseManifest, quantOf, sha256Hex } from '../../src/model/manifest.js';
import { parseRuntimeList, servedFiles } from '../../src/playground/runtime-files.js';
import { fixedBytes } from '../../src/worker/groups/isolate-room.js';

const MODEL = 'stories260K';
const G = 3;
const H = 1;
const OUT = join(REPO_ROOT, `.topology-test-${process.pid}`);
const VARS = {
  MODEL_NAME: MODEL,
  LAYER_GROUPS: String(G),
  HEAD_GROUPS: String(H),
  EMBED_IN_FRONT: '1',
  // a dense prefill of the prompt below goes through the chain in 3 steps
  PREFILL_STEP_TOKENS: '12',
  // the unsplit Worker below runs with wrangler.toml's budget too
  MEMORY_BUDGET_MB: '128',
};
const PROMPT =
  'Once upon a time, there was a little cat named Tom. Tom liked to play with a red ball in the garden. One day,';

/** What the tests call on a group Worker's LayerGroup through Miniflare's proxy. */
interface GroupRpc {
  topologyProbe(): Promise<TopologyProbe>;
  acquire(a: GroupAddress & { exclusive: boolean }): Promise<Result<{ loaded: boolean }>>;
  release(lease: string): Promise<void>;
}

let topo: RunningTopology;
let unsplit: { child: ChildProcess; base: string } | null = null;
const started: ChildProcess[] = [];

const instance = async (w: GeneratedWorker, name: string): Promise<GroupRpc> => {
  const ns = await topo.namespace(w);
  return ns.get(ns.idFromName(name)) as unknown as GroupRpc;
};
/** chain c's instance of object g, named as chain.ts poolChain names it */
const poolName = (c: number, g: number) => `pool/${c}/${G}+${H}/${g}`;
const groupWorkers = () => topo.topology.workers.filter((w) => w.role !== 'front');

async function complete(base: string, body: object) {
  const res = await fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    // Each request computed fresh (no prefix cache): the same prompt is sent again and again.
    body: JSON.stringify({ model: MODEL, prompt: PROMPT, cache_prompt: false, ...body }),
  });
  return {
    status: res.status,
    body: (await res.json()) as {
      choices: { text: string; finish_reason: string }[];
      usage: { prompt_tokens: number; completion_tokens: number };
      lazy_stats: {
        computed_per_layer: number[];
        prefill_computed_per_layer: number[];
        kv_entries: number;
        split?: { groups: number; heads: number; chain: number; prefill_steps: number };
      };
    },
  };
}

beforeAll(async () => {
  process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= 'false';
  generateTopology({
    wrangler: join(REPO_ROOT, 'wrangler.toml'),
    topology: join(REPO_ROOT, 'topology.json'),
    out: OUT,
    vars: VARS,
  });
  const port = await freePortIn(8940, 8969);
  topo = await serveTopology({ dir: OUT, port });
  // The unsplit engine: the same front Worker with the whole model (wrangler.toml's assets).
  const p2 = await freePortIn(8940, 8969, [port]);
  const log = join(OUT, 'unsplit.log');
  // Every var as the topology's Workers have it (KV_FORMAT int8 from topology.json too), but one layer group.
  const vars = Object.entries({ ...topo.topology.vars, LAYER_GROUPS: '1' }).flatMap(([k, v]) => ['--var', `${k}:${v}`]);
  const child = spawnServe(['--ip', '127.0.0.1', '--port', String(p2), ...vars], log);
  started.push(child);
  const base = `http://127.0.0.1:${p2}`;
  await waitReady(`${base}/healthz`, child, 240_000);
  unsplit = { child, base };
});

afterAll(async () => {
  for (const c of started) killGroup(c, 'SIGTERM');
  await topo?.dispose();
  rmSync(OUT, { recursive: true, force: true });
});

describe('the multi-Worker topology in local workerd (stories260K, 3 layer groups + 1 classifier group)', () => {
  it('generates one Worker per group, each with only its own shards, and the front binding each by script_name', () => {
    const workers = topo.topology.workers;
    expect(workers.map((w) => [w.name, w.role, w.object])).toEqual([
      ['lazy-edge-group-0', 'group', 0],
      ['lazy-edge-group-1', 'group', 1],
      ['lazy-edge-group-2', 'group', 2],
      ['lazy-edge-classifier-0', 'classifier', 3],
      ['lazy-edge', 'front', null],
    ]);
    // stories260K: 5 layers as 2 + 2 + 1, the embedding with the tokenizer in the front
    expect(workers.map((w) => w.files)).toEqual([
      ['layer_00.onnx', 'layer_01.onnx'],
      ['layer_02.onnx', 'layer_03.onnx'],
      ['layer_04.onnx'],
      ['head.onnx'],
      ['tokenizer.bin', 'embed.onnx'],
    ]);
    const front = JSON.parse(readFileSync(workers[4].config, 'utf8')) as {
      durable_objects: { bindings: { name: string; class_name: string; script_name?: string }[] };
    };
    expect(front.durable_objects.bindings.filter((b) => b.script_name)).toEqual(
      workers.slice(0, 4).map((w, g) => ({ name: `LAYER_GROUP_${g}`, class_name: 'LayerGroup', script_name: w.name })),
    );
    for (const w of workers.slice(0, 4)) {
      const c = JSON.parse(readFileSync(w.config, 'utf8')) as {
        vars: Record<string, string>;
        workers_dev: boolean;
        durable_objects: { bindings: { name: string; class_name: string; script_name?: string }[] };
      };
      expect(c.vars).toMatchObject({ ...VARS, TOPOLOGY_OBJECT: String(w.object) });
      expect(c.workers_dev).toBe(false);
      // a layer group binds the next one (it hands the frontier on itself); the last and the classifier bind none
      const g = w.object!;
      expect(c.durable_objects.bindings.filter((b) => b.script_name)).toEqual(
        g < 2 ? [{ name: `LAYER_GROUP_${g + 1}`, class_name: 'LayerGroup', script_name: workers[g + 1].name }] : [],
      );
    }
    // each Worker is deployed after the ones it binds
    expect(deployOrder(topo.topology).map((w) => w.name)).toEqual([
      'lazy-edge-classifier-0',
      'lazy-edge-group-2',
      'lazy-edge-group-1',
      'lazy-edge-group-0',
      'lazy-edge',
    ]);
  });

  it('a bad configuration is refused with a clear message, and nothing is written', () => {
    const bad = (vars: Record<string, string>) => () =>
      generateTopology({
        wrangler: join(REPO_ROOT, 'wrangler.toml'),
        topology: join(REPO_ROOT, 'topology.json'),
        out: `${OUT}-bad`,
        vars: { ...VARS, ...vars },
      });
    expect(bad({ LAYER_GROUPS: '1' })).toThrow(/needs at least 2/);
    expect(bad({ LAYER_GROUPS: '6' })).toThrow(/has only 5 layers/);
    expect(bad({ HEAD_GROUPS: '2' })).toThrow(/at most 1 classifier groups/);
    expect(bad({ MODEL_NAME: 'no-such-model' })).toThrow(TopologyError);
    expect(bad({ LAYER_GRUOPS: '3' })).toThrow(/not one of wrangler.toml's \[vars\]/);
    expect(existsSync(`${OUT}-bad`)).toBe(false);
  });

  for (const [name, body] of [
    ['dense, greedy', { max_tokens: 40, temperature: 0, lazy: { enabled: false } }],
    [
      'lazy bos,1:0.5,3:0.5, sampled',
      { max_tokens: 40, temperature: 0.8, seed: 7, lazy: { schedule: 'bos,1:0.5,3:0.5' } },
    ],
    [
      'lazy bos,1:0.4,2:0.5,4:0.5, greedy',
      { max_tokens: 40, temperature: 0, lazy: { schedule: 'bos,1:0.4,2:0.5,4:0.5' } },
    ],
  ] as const) {
    it(`${name}: the same tokens and per-layer work as the unsplit Worker`, async () => {
      const whole = await complete(unsplit!.base, body);
      const split = await complete(topo.url.origin, body);
      expect(whole.status).toBe(200);
      expect(split.status).toBe(200);
      expect(whole.body.choices[0].text.length).toBeGreaterThan(20);
      expect(split.body.choices[0]).toEqual(whole.body.choices[0]);
      expect(split.body.usage).toEqual(whole.body.usage);
      for (const k of ['computed_per_layer', 'prefill_computed_per_layer', 'kv_entries'] as const)
        expect(split.body.lazy_stats[k]).toEqual(whole.body.lazy_stats[k]);
      expect(whole.body.lazy_stats.split).toBeUndefined();
      expect(split.body.lazy_stats.split).toMatchObject({ groups: G, heads: H });
      // a dense prefill is cut into steps of PREFILL_STEP_TOKENS; a lazy one never is
      const steps = Math.ceil(split.body.usage.prompt_tokens / 12);
      expect(split.body.lazy_stats.split!.prefill_steps).toBe('enabled' in body.lazy ? steps : 1);
    });
  }

  it("a chat session across the group Workers: the unsplit Worker's replies turn after turn, its caches kept in the groups", async () => {
    const session = async (base: string) => {
      const created = await fetch(`${base}/v1/sessions`, { method: 'POST' });
      expect(created.status).toBe(200);
      const { id } = (await created.json()) as { id: string };
      const turns: { text: string; cached: number }[] = [];
      for (const content of ['Once upon a time, there was a little cat named Tom.', 'One day, the ball rolled away.']) {
        const res = await fetch(`${base}/v1/sessions/${id}/messages`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ content, max_tokens: 24, temperature: 0, lazy: { schedule: 'bos,1:0.5,3:0.5' } }),
        });
        const text = await res.text();
        expect(res.status, text).toBe(200);
        const r = JSON.parse(text) as {
          choices: { message: { content: string } }[];
          usage: { prompt_tokens_details: { cached_tokens: number } };
        };
        turns.push({ text: r.choices[0].message.content, cached: r.usage.prompt_tokens_details.cached_tokens });
      }
      return turns;
    };
    const whole = await session(unsplit!.base);
    expect(whole[1].cached).toBeGreaterThan(0);
    expect(await session(topo.url.origin)).toEqual(whole);
  });

  it("each group Worker runs in an isolate of its own, not the front's; its wasm memory is read inside it", async () => {
    // the front's own LayerGroup class (its fallback) runs in the front's isolate: its probe() names that isolate
    const frontNs = await topo.mf.getDurableObjectNamespace('LAYER_GROUP_OBJECTS', 'lazy-edge');
    const frontStub = frontNs.get(frontNs.idFromName('probe')) as unknown as { probe(): Promise<{ isolate: string }> };
    const frontIsolate = (await frontStub.probe()).isolate;
    const isolates = new Set<string>([frontIsolate]);
    for (const w of groupWorkers()) {
      const p = await (await instance(w, poolName(0, w.object!))).topologyProbe();
      expect(p.object).toBe(w.object);
      expect(p.role).toBe(w.description);
      // after the requests above, every group's isolate holds onnxruntime's heap (stories260K: 16 MiB)
      expect(p.wasm_heap_bytes).toBeGreaterThan(0);
      expect(isolates.has(p.isolate)).toBe(false);
      isolates.add(p.isolate);
    }
    expect(isolates.size).toBe(G + H + 1);
  });

  it("a group Worker holds only its own shards: another group's are not among its assets", async () => {
    for (const w of groupWorkers()) {
      const { ASSETS } = (await topo.mf.getBindings(w.name)) as { ASSETS: Fetcher };
      for (const other of topo.topology.workers) {
        for (const f of other.files) {
          const res = await ASSETS.fetch(`https://assets.local/${MODEL}/${f}`);
          await res.arrayBuffer();
          expect([f, res.status]).toEqual([f, other === w ? 200 : 404]);
        }
      }
    }
  });

  it('GET /v1/model-files on the front serves every file of the manifest, each from the Worker that holds it, with the bytes its sha256 names', async () => {
    const manifest = await fetch(`${topo.url.origin}/v1/model-files/manifest.json`);
    expect(manifest.status).toBe(200);
    const m = parseManifest(await manifest.text());
    const entries = [m.tokenizer, ...m.files.embed, ...m.files.layers, ...m.files.head];
    // the front holds only some of them: the others come through its bindings from the group Workers
    const frontFiles = topo.topology.workers.find((w) => w.role === 'front')!.files;
    expect(entries.filter((e) => !frontFiles.includes(e.file)).length).toBeGreaterThan(0);
    for (const e of entries) {
      const res = await fetch(`${topo.url.origin}/v1/model-files/${e.sha256}/${e.file}`);
      const bytes = new Uint8Array(await res.arrayBuffer());
      expect([e.file, res.status, bytes.length]).toEqual([e.file, 200, e.bytes]);
      expect(await sha256Hex(bytes)).toBe(e.sha256);
    }
    // another file's hash never answers this file's name
    const [a, b] = m.files.layers;
    const wrong = await fetch(`${topo.url.origin}/v1/model-files/${b.sha256}/${a.file}`);
    await wrong.arrayBuffer();
    expect(wrong.status).toBe(404);
  });

  it("the front serves the playground's in-browser runtime from its assets; no group Worker holds it", async () => {
    const front = topo.topology.workers.find((w) => w.role === 'front')!;
    const res = await fetch(`${topo.url.origin}/playground/runtime.json`);
    expect(res.status).toBe(200);
    const list = parseRuntimeList(await res.text());
    expect([...(front.page_files ?? [])].sort()).toEqual(
      ['runtime.json', ...servedFiles(list).map((f) => f.file)].map((f) => `_playground/${f}`).sort(),
    );
    for (const f of servedFiles(list)) {
      const r = await fetch(`${topo.url.origin}/playground/files/${f.file}`);
      expect([f.file, r.status]).toEqual([f.file, 200]);
      expect(await sha256Hex(new Uint8Array(await r.arrayBuffer()))).toBe(f.sha256);
    }
    for (const w of groupWorkers()) {
      const { ASSETS } = (await topo.mf.getBindings(w.name)) as { ASSETS: Fetcher };
      const r = await ASSETS.fetch(`https://assets.local/_playground/runtime.json`);
      await r.arrayBuffer();
      expect([w.name, r.status]).toEqual([w.name, 404]);
    }
  });

  it("two chains' instances of one group are hosted by its isolate and share one load of its weights", async () => {
    for (const w of groupWorkers()) {
      const g = w.object!;
      const address = { groups: G, group: g, heads: H, frontEmbeds: true, exclusive: false };
      const [a, b] = [await instance(w, poolName(0, g)), await instance(w, poolName(1, g))];
      expect(await a.acquire({ ...address, lease: 'topology-test-a' })).toMatchObject({ ok: true });
      expect(await b.acquire({ ...address, lease: 'topology-test-b' })).toMatchObject({ ok: true });
      const [pa, pb] = [await a.topologyProbe(), await b.topologyProbe()];
      expect(pa.isolate).toBe(pb.isolate);
      // one piece loaded once in this isolate, whichever chains served the requests above and this one
      expect(Object.values(pa.loads)).toEqual([1]);
      expect(pb.loads).toEqual(pa.loads);
      await a.release('topology-test-a');
      await b.release('topology-test-b');
    }
  });

  it('a call addressed to another object of the split is refused by the group Worker (topology_mismatch)', async () => {
    const w = groupWorkers()[0];
    const r = await (
      await instance(w, 'misaddressed')
    ).acquire({
      groups: G,
      group: 1,
      heads: H,
      frontEmbeds: true,
      exclusive: false,
      lease: 'x',
    });
    expect(r).toMatchObject({ ok: false, error: { code: 'topology_mismatch' } });
    expect((r as { error: { message: string } }).error.message).toMatch(/regenerate and deploy them together/);
  });
});

/**
 * A group isolate hosts many sessions' instances, all within the one isolate's budget: a session
 * that would take an isolate past it is refused (503 isolate_full) before anything changes, and the
 * sessions already there go on, also across a restart of every Worker of the topology (memory gone,
 * storage kept). The budget is set, from the engine's own estimate, to hold one session's state of
 * the served context beside the weights but not two.
 */
describe('sessions in the topology: room per group isolate, and a restart of every Worker', () => {
  const OUT2 = join(REPO_ROOT, `.topology-test-room-${process.pid}`);
  const STORY =
    'Once upon a time, there was a little cat named Tom. Tom liked to play with a red ball in the garden. ' +
    'One day, the ball rolled under a big tree. Tom looked and looked, but he could not find it. ' +
    'His friend the dog came to help. They looked under the bushes and behind the fence. ' +
    'At last the bird in the tree said: the ball is here, under my nest! Tom was very happy. ' +
    'He said thank you to the bird and to the dog, and they all played with the red ball until the sun went down. ';
  const TURNS = [STORY + STORY, 'Then Tom went home.', 'The next day, it was sunny.'];
  let room: RunningTopology;

  /** A budget that holds each group's weights and runtime plus one (lazy) state of the served context, but not two of over half of it. */
  function budgetMb(): number {
    const manifest = parseManifest(readFileSync(join(REPO_ROOT, 'model-shards', MODEL, 'manifest.json'), 'utf8'));
    const cfg = { ...manifest.config, seqLen: Math.min(manifest.config.seqLen, 2048), kvFormat: 'int8' as const };
    const headRows = manifest.files.head.map((p) => p.rows);
    const figures = planSplit(cfg, quantOf(manifest), headRows, G, H, true)
      .slice(0, G)
      .map((part) => {
        const fresh = groupState(cfg, part.layers);
        return {
          loads: part.bytes.total,
          fixed: fixedBytes(part.bytes),
          state: fresh.bytesAt(cfg.seqLen, true),
          // a state of over half the context with no Aux entry yet, and its Aux entries when another one joins
          half: fresh.bytesAt(cfg.seqLen / 2 + 1, false),
          halfAux: (cfg.seqLen / 2 + 1) * cfg.dim * 4,
        };
      });
    // one full state fits every group; two states of more than half the context (capacity 512) fit none
    const budget = Math.max(...figures.map((f) => Math.max(f.loads, f.fixed + f.state))) + 1024;
    expect(figures.some((f) => f.fixed + 2 * f.half + f.halfAux > budget)).toBe(true);
    return Math.ceil((budget / MB) * 1e6) / 1e6;
  }

  async function turn(base: string, id: string, content: string) {
    const res = await fetch(`${base}/v1/sessions/${id}/messages`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ content, max_tokens: 12, temperature: 0, lazy: { schedule: 'bos,1:0.5,3:0.5' } }),
    });
    const body = (await res.json()) as {
      choices?: { message: { content: string } }[];
      usage?: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
      error?: { code: string; message: string };
    };
    return { status: res.status, body, retryAfter: res.headers.get('Retry-After') };
  }
  const newSession = async (base: string) => {
    const res = await fetch(`${base}/v1/sessions`, { method: 'POST' });
    expect(res.status).toBe(200);
    return ((await res.json()) as { id: string }).id;
  };

  beforeAll(async () => {
    generateTopology({
      wrangler: join(REPO_ROOT, 'wrangler.toml'),
      topology: join(REPO_ROOT, 'topology.json'),
      out: OUT2,
      vars: { ...VARS, MEMORY_BUDGET_MB: String(budgetMb()) },
    });
    room = await serveTopology({ dir: OUT2, port: await freePortIn(8940, 8969), persist: join(OUT2, 'state') });
  });
  afterAll(async () => {
    await room?.dispose();
    rmSync(OUT2, { recursive: true, force: true });
  });

  it('a second session that would overfill a group isolate is refused (503 isolate_full); the first goes on, across a restart, as the unsplit Worker answers', async () => {
    const ref = await newSession(unsplit!.base);
    const want: string[] = [];
    for (const content of TURNS) {
      const r = await turn(unsplit!.base, ref, content);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      want.push(r.body.choices![0].message.content);
    }

    const base = room.url.origin;
    const a = await newSession(base);
    const first = await turn(base, a, TURNS[0]);
    expect(first.status, JSON.stringify(first.body)).toBe(200);
    expect(first.body.choices![0].message.content).toBe(want[0]);
    expect(first.body.usage!.prompt_tokens).toBeGreaterThan(256); // a state of the served context's capacity

    const b = await newSession(base);
    const refused = await turn(base, b, TURNS[0]);
    expect(refused.status).toBe(503);
    expect(refused.body.error).toMatchObject({ code: 'isolate_full' });
    expect(refused.body.error!.message).toMatch(/MEMORY_BUDGET_MB/);
    expect(refused.retryAfter).not.toBeNull();

    const second = await turn(base, a, TURNS[1]);
    expect(second.status, JSON.stringify(second.body)).toBe(200);
    expect(second.body.choices![0].message.content).toBe(want[1]);
    expect(second.body.usage!.prompt_tokens_details.cached_tokens).toBeGreaterThan(256);

    // Every Worker restarted: the groups' and the sessions' memory gone, their storage kept.
    await room.restart();
    const third = await turn(base, a, TURNS[2]);
    expect(third.status, JSON.stringify(third.body)).toBe(200);
    expect(third.body.choices![0].message.content).toBe(want[2]);

    // The room the first session held is free once it is deleted: the refused session now goes in.
    expect((await fetch(`${base}/v1/sessions/${a}`, { method: 'DELETE' })).status).toBe(200);
    const retried = await turn(base, b, TURNS[0]);
    expect(retried.status, JSON.stringify(retried.body)).toBe(200);
    expect(retried.body.choices![0].message.content).toBe(want[0]);
  });
});

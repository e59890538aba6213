/**
 * The CPU time each object of the default topology spends per call, for setting each Worker's
 * `limits.cpu_ms` (docs/DEPLOY.md). A deployed object's CPU cannot be read from inside workerd (its
 * clocks stand still while JS runs), so the objects' work is run here, in one Node process, exactly as
 * the objects run it: the topology's build and split (topology.json), each object's part loaded
 * alone (loadModelPart), a dense prefill of N tokens in steps of PREFILL_STEP_TOKENS handed from
 * object to object, then greedy decode steps; each object's CPU time (process.cpuUsage: wasm runs on
 * this thread) is taken around each of its calls. Dense is the upper bound: LazyLLM computes less.
 *
 *   flock /tmp/lazy-edge-cpu.lock npx tsx scripts/topology-cpu.ts [--tokens 2000,8000] [--decode 8] [--json FILE]
 *
 * What a Worker's cpu_ms bounds: the CPU of one invocation. A group's or classifier's invocation is
 * one RPC call (one step); the front's is the whole request (tokenizer, embedding, sampling, the JSON),
 * without the groups' work, which runs in their isolates.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { groupState, placeSplit } from '../src/engine/layer-group.js';
import { argmax } from '../src/engine/logits.js';
import { loadModelPart, type ModelPart } from '../src/engine/model.js';
import { embedStep, runPart, type Frontier } from '../src/engine/step.js';
import { headPartLogits } from '../src/engine/vocab-parts.js';
import { fail, initNodeRuntime, readBytes, REPO_ROOT, runMain } from './lib/node-env.js';

const USAGE = 'usage: npx tsx scripts/topology-cpu.ts [--tokens 2000,8000] [--decode 8] [--json FILE] [--data FILE]';

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** Runs `f`, adding its CPU time to `into[key]` (sum) and keeping its largest single call. */
async function timed<T>(
  into: Map<string, { sum: number; max: number; calls: number }>,
  key: string,
  f: () => Promise<T>,
) {
  const t0 = cpuMs();
  const r = await f();
  const ms = cpuMs() - t0;
  const e = into.get(key) ?? { sum: 0, max: 0, calls: 0 };
  into.set(key, { sum: e.sum + ms, max: Math.max(e.max, ms), calls: e.calls + 1 });
  return r;
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      tokens: { type: 'string', default: '2000,8000' },
      decode: { type: 'string', default: '8' },
      json: { type: 'string' },
      data: {
        type: 'string',
        default: ['apache-2.0.txt', 'lgpl-2.1.txt', 'mpl-2.0.txt']
          .map((f) => resolve(REPO_ROOT, '../shared/data', f))
          .join(','),
      },
    },
    strict: true,
  });
  const counts = args.tokens.split(',').map(Number);
  if (counts.some((n) => !Number.isInteger(n) || n < 2)) fail(`--tokens: expected integers >= 2\n${USAGE}`);
  const decode = Number(args.decode);
  if (!Number.isInteger(decode) || decode < 0) fail(`--decode: expected an integer >= 0\n${USAGE}`);

  const topo = JSON.parse(readFileSync(join(REPO_ROOT, 'topology.json'), 'utf8')) as {
    vars: Record<string, string>;
    shards_directory: string;
  };
  const v = topo.vars;
  const [G, H, frontEmbeds, stepTokens] = [
    Number(v.LAYER_GROUPS),
    Number(v.HEAD_GROUPS),
    v.EMBED_IN_FRONT === '1',
    Number(v.PREFILL_STEP_TOKENS),
  ];
  const dir = join(REPO_ROOT, topo.shards_directory, v.MODEL_NAME);
  const manifest = readFileSync(join(dir, 'manifest.json'), 'utf8');
  initNodeRuntime();
  const opts = {
    contextTokens: Math.max(...counts) + decode + 1,
    kvFormat: v.KV_FORMAT as 'int8',
    memoryBudgetBytes: Infinity,
  };
  const read = async (f: string) => readBytes(join(dir, f));
  const front = await loadModelPart(
    manifest,
    read,
    { layers: { start: 0, end: 0 }, embed: frontEmbeds, head: [], tokenizer: true },
    opts,
  );
  const cfg = front.config;
  const specs = placeSplit(cfg.nLayers, front.manifest.files.head.length, G, H, frontEmbeds);
  const objects: ModelPart[] = [];
  for (const [k, spec] of specs.entries()) {
    process.stderr.write(`topology-cpu: loading object ${k + 1} of ${specs.length} ...\r`);
    objects.push(await loadModelPart(manifest, read, { ...spec, tokenizer: false }, opts));
  }
  process.stderr.write('\n');
  const text = args.data
    .split(',')
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n\n');
  const all = front.tokenizer!.encode(text);
  const results = [];
  for (const n of counts) {
    if (all.length < n) fail(`--data holds ${all.length} tokens; ${n} asked`);
    const cpu = new Map<string, { sum: number; max: number; calls: number }>();
    const states = objects.slice(0, G).map((p) => groupState(cfg, p.layerRange));
    const step = async (start: number, tokens: number[]): Promise<number> => {
      let f: Frontier = await timed(cpu, 'front', () => embedStep(front, start, tokens));
      for (let g = 0; g < G; g++) {
        const out = await timed(cpu, `group ${g}`, () =>
          runPart(objects[g], states[g], { frontier: f }, { schedule: null }),
        );
        if (!('frontier' in out.output)) throw new Error(`group ${g} answered logits`);
        f = out.output.frontier;
      }
      const q = f.carried.length;
      const last = f.hidden.slice((q - 1) * cfg.dim, q * cfg.dim);
      const rows: { start: number; logits: Float32Array }[] = [];
      for (let k = 0; k < H; k++)
        rows.push(...(await timed(cpu, `classifier ${k}`, () => headPartLogits(objects[G + k].head, last, cfg.dim))));
      return timed(cpu, 'front', async () => {
        const logits = new Float32Array(cfg.vocabSize);
        for (const r of rows) logits.set(r.logits, r.start);
        return argmax(logits);
      });
    };
    const prompt = all.slice(0, n);
    // the front tokenizes the prompt (about 4.4 characters a token)
    await timed(cpu, 'front', async () => front.tokenizer!.encode(text.slice(0, Math.ceil(n * 4.4))));
    const t0 = performance.now();
    let next = 0;
    for (let s = 0; s < n; s += stepTokens) {
      process.stderr.write(`topology-cpu: ${n} tokens: prefill ${s} of ${n} ...\r`);
      next = await step(s, prompt.slice(s, Math.min(n, s + stepTokens)));
    }
    const prefillCalls = new Map([...cpu].map(([k, e]) => [k, { ...e }]));
    for (let i = 0; i < decode; i++) next = await step(n + i, [next]);
    process.stderr.write('\n');
    const row = {
      tokens: n,
      wall_ms: performance.now() - t0,
      objects: [...cpu].map(([object, e]) => ({
        object,
        request_cpu_ms: e.sum,
        max_call_cpu_ms: e.max,
        calls: e.calls,
        prefill_max_call_cpu_ms: prefillCalls.get(object)?.max ?? 0,
      })),
    };
    results.push(row);
    for (const o of row.objects)
      process.stderr.write(
        `topology-cpu: ${n} tokens: ${o.object}: ${o.request_cpu_ms.toFixed(0)} ms CPU in ${o.calls} calls, largest call ${o.max_call_cpu_ms.toFixed(0)} ms\n`,
      );
  }
  const out = { model: v.MODEL_NAME, split: { groups: G, heads: H, frontEmbeds, stepTokens }, results };
  if (args.json) writeFileSync(args.json, JSON.stringify(out, null, 1));
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

runMain(main);

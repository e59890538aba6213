/**
 * node --expose-gc --import tsx scripts/memory/split-memory.ts [--model DIR] [--context N] [--split G+H] [--kv f32|f16|int8] [--embed-in-front] [--objects 0,1,..]
 *                                                      [--runtime node|workerd] [--json]
 *
 * Memory per object of a split model, measured: every object of the split (layer groups, then
 * classifier objects, then with --embed-in-front the front holding the tokenizer and embedding;
 * src/engine/layer-group.ts planSplit) is loaded alone in a fresh Node process,
 * as its Durable Object would load it (its shards only, loadModelPart), its layers' KV cache filled
 * with N tokens by one dense prefill (chunked as served), and what the process then holds is
 * reported: onnxruntime's wasm memory (a high-water mark) plus the JavaScript heap net of the
 * process before loading (the KV and Aux caches among it), after a full GC; and the peaks sampled
 * while loading and filling. A group after the first receives N synthetic hidden states (memory
 * depends on shapes, not values); the first embeds N token ids. Objects run one at a time.
 * --step-tokens C fills in steps of at most C tokens instead of one (scripts/memory/split-fill.ts).
 * Locally every object of a class shares one workerd isolate (docs/LAYER-GROUPS.md), which is why
 * this measures each in a process of its own. --objects measures only those (equal groups hold
 * the same, so the first, one middle group and a classifier object stand for the rest at long
 * contexts, where each takes minutes). Progress on stderr; --json prints one object with
 * `objects` (each: its pieces and measured bytes) and `max_object_bytes`.
 *
 * --runtime workerd loads each object alone in a workerd process of its own instead
 * (scripts/memory/split-worker/, served by scripts/serve.ts): there the wasm memory is read inside,
 * and the process's resident set (VmRSS) and its peak (VmHWM) from /proc, net of the process's
 * resident set before the load; they hold the JS heap and what workerd allocates for the isolate
 * (compiled code included), which no API inside workerd reports.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { isKvFormat, KV_FORMATS, type KvFormat } from '../../src/engine/kv-rows.js';
import { planSplit } from '../../src/engine/layer-group.js';
import { MB } from '../../src/engine/memory-budget.js';
import { loadModelPart, type PartSpec } from '../../src/engine/model.js';
import { parseManifest, quantOf } from '../../src/model/manifest.js';
import { wasmHeapBytes } from '../../src/runtime/onnx-runtime.js';
import { fail, initNodeRuntime, readBytes, REPO_ROOT, runMain, SHARDS_ROOT } from '../lib/node-env.js';
import { servedShardsDir } from '../lib/served-model.js';
import { fillPart } from './split-fill.js';
import { findWorkerds, residentBytes, startWranglerDev, waitReady } from '../lib/wrangler-dev.js';

const t0 = Date.now();
const progress = (m: string) =>
  process.stderr.write(`[split-memory ${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${m}\n`);
const jsBytes = () => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
const settle = () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) fail('run with node --expose-gc');
  gc();
  gc();
};

interface ChildJob {
  dir: string;
  context: number;
  kv: KvFormat;
  part: PartSpec;
  /** fill in steps of at most this many tokens (0: one step) */
  stepTokens: number;
}

interface ObjectMeasure {
  load_peak_bytes: number;
  fill_peak_bytes: number;
  steady_bytes: number;
  wasm_bytes: number;
  js_heap_bytes: number;
  kv_aux_bytes: number;
}

async function child(job: ChildJob): Promise<ObjectMeasure> {
  initNodeRuntime();
  settle();
  const base = jsBytes();
  let peak = 0;
  const sample = () => (peak = Math.max(peak, (wasmHeapBytes() ?? 0) + Math.max(0, jsBytes() - base)));
  const timer = setInterval(sample, 2);
  const manifest = readFileSync(join(job.dir, 'manifest.json'), 'utf8');
  const part = await loadModelPart(manifest, async (f) => readBytes(join(job.dir, f)), job.part, {
    contextTokens: job.context,
    kvFormat: job.kv,
    memoryBudgetBytes: Infinity,
  });
  sample();
  const loadPeak = peak;
  peak = 0;
  settle();
  const { seq, kvAuxBytes: kvAux } = await fillPart(part, sample, job.stepTokens);
  (globalThis as { keep?: unknown }).keep = seq; // held, as the object holds it
  sample();
  clearInterval(timer);
  const fillPeak = peak;
  settle();
  const wasm = wasmHeapBytes() ?? 0;
  const js = Math.max(0, jsBytes() - base);
  return {
    load_peak_bytes: loadPeak,
    fill_peak_bytes: fillPeak,
    steady_bytes: wasm + js,
    wasm_bytes: wasm,
    js_heap_bytes: js,
    kv_aux_bytes: kvAux,
  };
}

interface WorkerdMeasure {
  wasm_after_load_bytes: number;
  wasm_bytes: number;
  /** VmRSS net of the process before loading: after the load, after the fill */
  rss_after_load_bytes: number;
  rss_bytes: number;
  /** VmHWM (peak resident set) net of the process's resident set before loading: through the load, through the fill */
  load_peak_bytes: number;
  fill_peak_bytes: number;
  kv_aux_bytes: number;
}

/** One object alone in a workerd process (scripts/memory/split-worker/): loaded, filled, read from /proc. */
async function inWorkerd(job: ChildJob): Promise<WorkerdMeasure> {
  const model = basename(resolve(job.dir));
  if (resolve(job.dir) !== join(SHARDS_ROOT, model))
    fail(`--runtime workerd serves shards from ${SHARDS_ROOT}: --model must be a directory there`);
  const log = join(tmpdir(), `split-memory-workerd-${process.pid}.log`);
  const dev = await startWranglerDev(
    'scripts/memory/split-worker/wrangler.toml',
    log,
    {},
    { freeze: { models: [model] } },
  ); // edits and shard builds elsewhere must not reload it mid-fill
  try {
    await waitReady(`${dev.base}/noop`, dev.child, 180_000);
    const pids = findWorkerds(dev.child.pid!);
    if (!pids.length) fail(`no workerd process under the local server (log ${log})`);
    const before = pids.map((p) => residentBytes(p).rss);
    const post = async (path: string, body: object) => {
      const r = (await (
        await fetch(`${dev.base}${path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
        })
      ).json()) as Record<string, number> & { error?: string };
      if (r.error) throw new Error(`workerd ${path}: ${r.error} (log ${log})`);
      return r;
    };
    const load = await post('/load', { model, context: job.context, kv: job.kv, part: job.part });
    const afterLoad = pids.map(residentBytes);
    const fill = await post('/fill', { stepTokens: job.stepTokens });
    const afterFill = pids.map(residentBytes);
    // wrangler runs two workerd processes (an entry proxy and the runtime): the object's is the one that grew
    const i = afterFill.reduce((best, r, k) => (r.rss - before[k] > afterFill[best].rss - before[best] ? k : best), 0);
    return {
      wasm_after_load_bytes: load.wasm_bytes,
      wasm_bytes: fill.wasm_bytes,
      rss_after_load_bytes: afterLoad[i].rss - before[i],
      rss_bytes: afterFill[i].rss - before[i],
      load_peak_bytes: afterLoad[i].hwm - before[i],
      fill_peak_bytes: afterFill[i].hwm - before[i],
      kv_aux_bytes: fill.kv_aux_bytes,
    };
  } finally {
    await dev.stop();
  }
}

/** The CLI (also `npm run memory -- --split G+H ...`, scripts/memory/memory.ts): `args` as after the script's name. */
export async function splitMemoryMain(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' },
      context: { type: 'string', default: '2048' },
      split: { type: 'string', default: '8+2' },
      kv: { type: 'string', default: 'f32' },
      objects: { type: 'string' },
      'embed-in-front': { type: 'boolean', default: false },
      'step-tokens': { type: 'string', default: '0' },
      runtime: { type: 'string', default: 'node' },
      json: { type: 'boolean', default: false },
      child: { type: 'string' },
    },
  });
  if (values.child) {
    process.stdout.write(`${JSON.stringify(await child(JSON.parse(values.child) as ChildJob))}\n`);
    return;
  }
  const dir = values.model ?? servedShardsDir();
  const context = Number(values.context);
  if (!Number.isInteger(context) || context < 2) fail(`--context ${values.context} must be an integer of at least 2`);
  if (!isKvFormat(values.kv!)) fail(`--kv ${values.kv} must be one of ${KV_FORMATS.join(', ')}`);
  const stepTokens = Number(values['step-tokens']);
  if (!Number.isInteger(stepTokens) || stepTokens < 0)
    fail(`--step-tokens ${values['step-tokens']}: an integer >= 0 (0: the whole context in one step)`);
  const runtime = values.runtime!;
  if (runtime !== 'node' && runtime !== 'workerd') fail(`--runtime ${runtime}: node or workerd`);
  const [g, h = '0'] = values.split!.split('+');
  const G = Number(g);
  const H = Number(h);
  if (!Number.isInteger(G) || G < 1 || !Number.isInteger(H) || H < 0) fail(`--split ${values.split}: "G" or "G+H"`);
  const manifest = parseManifest(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  const cfg = {
    ...manifest.config,
    seqLen: Math.min(context, manifest.config.seqLen),
    kvFormat: values.kv as KvFormat,
  };
  const plan = planSplit(
    cfg,
    quantOf(manifest),
    manifest.files.head.map((p) => p.rows),
    G,
    H,
    values['embed-in-front'],
  );
  const only = values.objects === undefined ? null : new Set(values.objects.split(',').map(Number));
  if (only && [...only].some((i) => !(Number.isInteger(i) && i >= 0 && i < plan.length)))
    fail(`--objects ${values.objects}: indices of the ${plan.length} objects`);
  const objects = [];
  for (const [i, p] of plan.entries()) {
    if (only && !only.has(i)) continue;
    const job: ChildJob = {
      dir,
      context: cfg.seqLen,
      kv: values.kv as KvFormat,
      part: { layers: p.layers, embed: p.embed, head: p.head, tokenizer: p.front ?? false },
      stepTokens,
    };
    const layers = p.front
      ? 'front: tokenizer'
      : p.layers.end > p.layers.start
        ? `layers ${p.layers.start}..${p.layers.end - 1}`
        : 'no layers';
    const what = `object ${i}: ${layers}${p.embed ? ' + embedding' : ''}${p.head.length ? ` + classifier parts ${p.head.join(',')}` : ''}`;
    progress(`${what}: loading and filling ${cfg.seqLen} tokens in ${runtime}`);
    const estimate = `estimate ${(p.bytes.total / MB).toFixed(1)} MB`;
    const pieces = { index: i, ...(p.front ? { front: true } : {}), layers: p.layers, embed: p.embed, head: p.head };
    if (runtime === 'workerd') {
      const m = await inWorkerd(job);
      progress(
        `${what}: resident ${(m.rss_bytes / MB).toFixed(1)} MB (wasm ${(m.wasm_bytes / MB).toFixed(1)}), peak ${(m.load_peak_bytes / MB).toFixed(1)} through the load, ${(m.fill_peak_bytes / MB).toFixed(1)} through the fill; ${estimate}`,
      );
      objects.push({
        ...pieces,
        ...m,
        estimate_bytes: p.bytes.total,
        max_bytes: Math.max(m.rss_bytes, m.fill_peak_bytes),
      });
      continue;
    }
    const r = spawnSync(
      process.execPath,
      [
        '--expose-gc',
        '--import',
        'tsx',
        join(REPO_ROOT, 'scripts/memory/split-memory.ts'),
        '--child',
        JSON.stringify(job),
      ],
      { cwd: REPO_ROOT, encoding: 'utf8', maxBuffer: 1 << 20 },
    );
    if (r.status !== 0) fail(`${what} failed:\n${r.stderr}`);
    const m = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as ObjectMeasure;
    progress(
      `${what}: steady ${(m.steady_bytes / MB).toFixed(1)} MB (wasm ${(m.wasm_bytes / MB).toFixed(1)}, JS ${(m.js_heap_bytes / MB).toFixed(1)}), load peak ${(m.load_peak_bytes / MB).toFixed(1)}, fill peak ${(m.fill_peak_bytes / MB).toFixed(1)}; ${estimate}`,
    );
    objects.push({
      ...pieces,
      ...m,
      estimate_bytes: p.bytes.total,
      max_bytes: Math.max(m.steady_bytes, m.load_peak_bytes, m.fill_peak_bytes),
    });
  }
  const max = Math.max(...objects.map((o) => o.max_bytes));
  const out = {
    runtime,
    ...(runtime === 'workerd'
      ? {
          measured_in:
            'workerd process per object: VmRSS / VmHWM net of the process before the load; wasm memory inside',
        }
      : {}),
    model: manifest.name,
    context: cfg.seqLen,
    kv_format: values.kv,
    split: { layer_groups: G, head_groups: H, embed_in_front: values['embed-in-front'] },
    step_tokens: stepTokens,
    ...(only ? { measured_objects: [...only] } : {}),
    objects,
    max_object_bytes: max,
    fits_128mb: max <= 128 * MB,
  };
  progress(`max object ${(max / MB).toFixed(1)} MB: ${out.fits_128mb ? 'every object fits' : 'does not fit'} 128 MB`);
  process.stdout.write(values.json ? `${JSON.stringify(out)}\n` : `${JSON.stringify(out, null, 2)}\n`);
}

// Run as a script (not when scripts/memory/memory.ts imports it for --split).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href)
  runMain(() => splitMemoryMain(process.argv.slice(2)));

/**
 * node --expose-gc --import tsx scripts/split-memory.ts [--model DIR] [--context N] [--split G+H] [--kv f32|f16|int8] [--embed-in-front] [--objects 0,1,..] [--json]
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
 * Locally every object of a class shares one workerd isolate (docs/LAYER-GROUPS.md), which is why
 * this measures each in a process of its own. --objects measures only those (equal groups hold
 * the same, so the first, one middle group and a classifier object stand for the rest at long
 * contexts, where each takes minutes). Progress on stderr; --json prints one object with
 * `objects` (each: its pieces and measured bytes) and `max_object_bytes`.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { isKvFormat, KV_FORMATS, type KvFormat } from '../src/engine/kv-rows.js';
import { groupState, planSplit } from '../src/engine/layer-group.js';
import { MB } from '../src/engine/memory-budget.js';
import { loadModelPart, type PartSpec } from '../src/engine/model.js';
import { embedStep, runLayers, type Frontier } from '../src/engine/step.js';
import { headPartLogits } from '../src/engine/vocab-parts.js';
import { parseManifest, quantOf } from '../src/model/manifest.js';
import { wasmHeapBytes } from '../src/runtime/onnx-runtime.js';
import { fail, initNodeRuntime, readBytes, REPO_ROOT, runMain } from './lib/node-env.js';
import { servedShardsDir } from './lib/served-model.js';

const t0 = Date.now();
const progress = (m: string) => process.stderr.write(`[split-memory ${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${m}\n`);
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
  const part = await loadModelPart(manifest, async (f) => readBytes(join(job.dir, f)), job.part, { contextTokens: job.context, kvFormat: job.kv, memoryBudgetBytes: Infinity });
  sample();
  const loadPeak = peak;
  peak = 0;
  settle();
  const { dim, vocabSize } = part.config;
  const n = part.config.seqLen;
  let kvAux = 0;
  if (part.layerRange.end > part.layerRange.start) {
    const seq = groupState(part.config, part.layerRange);
    const ids = Array.from({ length: n }, (_, i) => (i * 7919) % vocabSize);
    let into: Frontier;
    if (part.embed.length) into = await embedStep(part, 0, ids);
    else {
      const hidden = new Float32Array(n * dim); // [n, dim] synthetic, values in [-1, 1)
      for (let i = 0; i < hidden.length; i++) hidden[i] = Math.sin(i * 12.9898) * 0.999;
      const all = Int32Array.from({ length: n }, (_, i) => i);
      into = { layer: part.layerRange.start, start: 0, newTokens: ids, active: all, scores: null, carried: all, hidden };
    }
    await runLayers(part, seq, into, { schedule: null });
    into = undefined as unknown as Frontier; // the step's input is dropped after it, as the object drops the RPC's frontier
    kvAux = seq.kv.bytes + seq.aux.bytes;
    (globalThis as { keep?: unknown }).keep = seq; // held, as the object holds it
  }
  if (part.layerRange.end === part.layerRange.start && part.embed.length) {
    // the front: embeds the prompt (the frontier it sends group 0), then drops it
    const f = await embedStep(part, 0, Array.from({ length: n }, (_, i) => (i * 7919) % vocabSize));
    sample();
    void f;
  }
  if (part.head.length) await headPartLogits(part.head, new Float32Array(dim).fill(0.1), dim);
  sample();
  clearInterval(timer);
  const fillPeak = peak;
  settle();
  const wasm = wasmHeapBytes() ?? 0;
  const js = Math.max(0, jsBytes() - base);
  return { load_peak_bytes: loadPeak, fill_peak_bytes: fillPeak, steady_bytes: wasm + js, wasm_bytes: wasm, js_heap_bytes: js, kv_aux_bytes: kvAux };
}

/** The CLI (also `npm run memory -- --split G+H ...`, scripts/memory.ts): `args` as after the script's name. */
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
  const [g, h = '0'] = values.split!.split('+');
  const G = Number(g);
  const H = Number(h);
  if (!Number.isInteger(G) || G < 1 || !Number.isInteger(H) || H < 0) fail(`--split ${values.split}: "G" or "G+H"`);
  const manifest = parseManifest(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  const cfg = { ...manifest.config, seqLen: Math.min(context, manifest.config.seqLen), kvFormat: values.kv as KvFormat };
  const plan = planSplit(cfg, quantOf(manifest), manifest.files.head.map((p) => p.rows), G, H, values['embed-in-front']);
  const only = values.objects === undefined ? null : new Set(values.objects.split(',').map(Number));
  if (only && [...only].some((i) => !(Number.isInteger(i) && i >= 0 && i < plan.length))) fail(`--objects ${values.objects}: indices of the ${plan.length} objects`);
  const objects = [];
  for (const [i, p] of plan.entries()) {
    if (only && !only.has(i)) continue;
    const job: ChildJob = { dir, context: cfg.seqLen, kv: values.kv as KvFormat, part: { layers: p.layers, embed: p.embed, head: p.head, tokenizer: p.front ?? false } };
    const layers = p.front ? 'front: tokenizer' : p.layers.end > p.layers.start ? `layers ${p.layers.start}..${p.layers.end - 1}` : 'no layers';
    const what = `object ${i}: ${layers}${p.embed ? ' + embedding' : ''}${p.head.length ? ` + classifier parts ${p.head.join(',')}` : ''}`;
    progress(`${what}: loading and filling ${cfg.seqLen} tokens`);
    const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', join(REPO_ROOT, 'scripts/split-memory.ts'), '--child', JSON.stringify(job)], { cwd: REPO_ROOT, encoding: 'utf8', maxBuffer: 1 << 20 });
    if (r.status !== 0) fail(`${what} failed:\n${r.stderr}`);
    const m = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as ObjectMeasure;
    progress(`${what}: steady ${(m.steady_bytes / MB).toFixed(1)} MB (wasm ${(m.wasm_bytes / MB).toFixed(1)}, JS ${(m.js_heap_bytes / MB).toFixed(1)}), load peak ${(m.load_peak_bytes / MB).toFixed(1)}, fill peak ${(m.fill_peak_bytes / MB).toFixed(1)}; estimate ${(p.bytes.total / MB).toFixed(1)} MB`);
    objects.push({ index: i, ...(p.front ? { front: true } : {}), layers: p.layers, embed: p.embed, head: p.head, ...m, estimate_bytes: p.bytes.total, max_bytes: Math.max(m.steady_bytes, m.load_peak_bytes, m.fill_peak_bytes) });
  }
  const max = Math.max(...objects.map((o) => o.max_bytes));
  const out = { runtime: 'node', model: manifest.name, context: cfg.seqLen, kv_format: values.kv, split: { layer_groups: G, head_groups: H, embed_in_front: values['embed-in-front'] }, ...(only ? { measured_objects: [...only] } : {}), objects, max_object_bytes: max, fits_128mb: max <= 128 * MB };
  progress(`max object ${(max / MB).toFixed(1)} MB: ${out.fits_128mb ? 'every object fits' : 'does not fit'} 128 MB`);
  process.stdout.write(values.json ? `${JSON.stringify(out)}\n` : `${JSON.stringify(out, null, 2)}\n`);
}

// Run as a script (not when scripts/memory.ts imports it for --split).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) runMain(() => splitMemoryMain(process.argv.slice(2)));

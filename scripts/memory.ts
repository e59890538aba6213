/**
 * npm run memory -- --model DIR --context N [--kv f32|f16|int8] [--runtime node|workerd] [--json]
 *
 * Memory measured, not estimated: loads the model as the Worker does (shards one at a time, verified),
 * fills the KV cache with N tokens of ../shared/data text (one dense prefill, chunked as served), and
 * reports what the isolate holds: onnxruntime's wasm memory (a high-water mark: it never shrinks) and
 * the JavaScript heap (objects + typed arrays outside the wasm memory, the KV and Aux caches among
 * them), at load (peak and settled) and once the cache holds N tokens.
 *
 *   node     process.memoryUsage() sampled every few ms while loading and filling; the JS figures are
 *            net of what the process held before loading (Node and tsx themselves), after a full GC.
 *   workerd  the same steps inside workerd (scripts/memory-workerd/, wrangler dev on 127.0.0.1): the wasm
 *            memory is read inside the isolate; workerd exposes no JS heap figure, so js_heap_bytes is the
 *            caches' own bytes (exact) and the process's resident set (which includes workerd itself) is
 *            reported beside it.
 *
 * --json prints one object: load_peak_bytes, steady_bytes, wasm_bytes, js_heap_bytes, and `measured_in`
 * saying which of the above produced them. Progress goes to stderr.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { SequenceState } from '../src/engine/caches.js';
import { isKvFormat, KV_FORMATS, type KvFormat } from '../src/engine/kv-rows.js';
import { DEFAULT_MEMORY_BUDGET_BYTES, MB } from '../src/engine/memory-budget.js';
import { runStep } from '../src/engine/step.js';
import { wasmHeapBytes } from '../src/runtime/onnx-runtime.js';
import { streamOfLength } from './lib/prompts.js';
import { fail, loadModelFromDir, REPO_ROOT, runMain } from './lib/node-env.js';
import { measureInWorkerd } from './lib/memory-workerd.js';
import type { MemoryReport } from './lib/memory-report.js';
import { servedShardsDir } from './lib/served-model.js';

const DEFAULT_TEXT = resolve(REPO_ROOT, '../shared/data/mpl-2.0.txt');
const t0 = Date.now();
const progress = (m: string) => process.stderr.write(`[memory ${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${m}\n`);

/** JS-side bytes: the V8 heap plus array buffers (Node does not count a WebAssembly.Memory among them). */
function jsBytes(): number {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

function settle(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) fail('run with node --expose-gc (npm run memory does)');
  gc();
  gc();
}

/** Tracks the maximum of wasm + JS bytes, sampled on a timer and whenever `mark` is called. */
function peakSampler(baseJs: number) {
  let peak = 0;
  const sample = () => {
    peak = Math.max(peak, (wasmHeapBytes() ?? 0) + Math.max(0, jsBytes() - baseJs));
  };
  const timer = setInterval(sample, 2);
  return {
    mark: sample,
    stop: () => {
      clearInterval(timer);
      sample();
      return peak;
    },
  };
}

async function measureInNode(dir: string, context: number, kv: KvFormat, text: string): Promise<MemoryReport> {
  settle();
  const baseJs = jsBytes();
  const load = peakSampler(baseJs);
  progress(`loading ${dir} (context ${context}, KV ${kv})`);
  const model = await loadModelFromDir(dir, { contextTokens: context, kvFormat: kv, memoryBudgetBytes: Infinity });
  const loadPeak = load.stop();
  settle();
  const wasmAfterLoad = wasmHeapBytes() ?? 0;
  const tokens = streamOfLength(model.tokenizer, text, context);
  const seq = new SequenceState(model.config);
  progress(`prefilling ${tokens.length} tokens`);
  const fill = peakSampler(baseJs);
  await runStep(model, seq, tokens, { schedule: null });
  const fillPeak = fill.stop();
  settle();
  const wasm = wasmHeapBytes() ?? 0;
  const js = Math.max(0, jsBytes() - baseJs);
  const e = model.memory;
  return {
    runtime: 'node',
    model: model.manifest.name,
    context: tokens.length,
    kv_format: kv,
    quant: `${model.quant.format}/${model.quant.kernel}`,
    load_peak_bytes: loadPeak,
    steady_bytes: wasm + js,
    wasm_bytes: wasm,
    js_heap_bytes: js,
    fill_peak_bytes: fillPeak,
    wasm_after_load_bytes: wasmAfterLoad,
    kv_cache_bytes: seq.kv.bytes + seq.aux.bytes,
    estimate_bytes: { weights: e.weights, kv_cache: e.kvCache, aux_cache: e.auxCache, runtime: e.runtime, total: e.total },
    deployed_isolate_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
    fits_deployed_isolate: Math.max(loadPeak, fillPeak, wasm + js) <= DEFAULT_MEMORY_BUDGET_BYTES,
    measured_in: 'node: wasm = WebAssembly.Memory size; JS = process.memoryUsage() heapUsed + arrayBuffers (which exclude the wasm memory), net of the process before loading, after a full GC; peaks sampled every 2 ms',
    js_baseline_bytes: baseJs,
  };
}

async function main() {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      context: { type: 'string', default: '2048' },
      kv: { type: 'string', default: 'f32' },
      runtime: { type: 'string', default: 'node' },
      text: { type: 'string', default: DEFAULT_TEXT },
      json: { type: 'boolean', default: false },
    },
  });
  const dir = values.model ?? servedShardsDir();
  const context = Number(values.context);
  if (!Number.isInteger(context) || context < 2) fail(`--context ${values.context} must be an integer of at least 2`);
  if (!isKvFormat(values.kv)) fail(`--kv ${values.kv} must be one of ${KV_FORMATS.join(', ')}`);
  if (values.runtime !== 'node' && values.runtime !== 'workerd') fail(`--runtime ${values.runtime} must be node or workerd`);
  let text: string;
  try {
    text = readFileSync(values.text, 'utf8');
  } catch (e) {
    fail(`--text ${values.text}: ${(e as Error).message}`);
  }
  const r = values.runtime === 'node' ? await measureInNode(dir, context, values.kv, text) : await measureInWorkerd({ dir, context, kv: values.kv, text, log: progress });
  const mb = (b: number) => `${(b / MB).toFixed(1)} MB`;
  progress(
    `${r.model} at ${r.context} tokens, KV ${r.kv_format}, ${r.quant}, in ${r.runtime}: load peak ${mb(r.load_peak_bytes)}, steady ${mb(r.steady_bytes)} ` +
      `(wasm ${mb(r.wasm_bytes)}, JS ${mb(r.js_heap_bytes)}), fill peak ${mb(r.fill_peak_bytes)}; estimate ${mb(r.estimate_bytes.total)}; ` +
      `${r.fits_deployed_isolate ? 'fits' : 'does not fit'} a 128 MB isolate`,
  );
  if (values.json) process.stdout.write(`${JSON.stringify(r)}\n`);
  else process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
}

runMain(main);

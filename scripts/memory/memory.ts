/**
 * npm run memory -- --model DIR --context N[,N2,...] [--kv f32|f16|int8] [--runtime node|workerd] [--schedule dense|default] [--json]
 *
 * Several contexts (--context 2048,4096,8192) load the model once, at the largest, and fill the cache
 * in steps, reporting after each: one JSON object per context, one per line. The KV cache grows by
 * doubling (caches.ts), so each point holds what a load at that context would, and the wasm memory is
 * the high-water mark of everything up to it (a fill to N alone reaches the same one: its chunks are as
 * long at N keys whatever came before).
 *
 * Memory measured, not estimated: loads the model as the Worker does (shards one at a time, verified),
 * fills the KV cache with N tokens of ../shared/data text (one dense prefill, chunked as served), and
 * reports what the isolate holds: onnxruntime's wasm memory (a high-water mark: it never shrinks) and
 * the JavaScript heap (objects + typed arrays outside the wasm memory, the KV and Aux caches among
 * them), at load (peak and settled) and once the cache holds N tokens.
 *
 *   node     process.memoryUsage() sampled every few ms while loading and filling; the JS figures are
 *            net of what the process held before loading (Node and tsx themselves), after a full GC.
 *   workerd  the same steps inside workerd (scripts/memory/worker/, a frozen snapshot served by scripts/serve.ts on 127.0.0.1): the wasm
 *            memory is read inside the isolate; workerd exposes no JS heap figure, so js_heap_bytes is the
 *            bytes of the caches and the embedding table (exact) and the process's resident set (which includes workerd itself) is
 *            reported beside it.
 *
 * --json prints one object: load_peak_bytes, steady_bytes, wasm_bytes, js_heap_bytes, and `measured_in`
 * saying which of the above produced them. Progress goes to stderr.
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { SequenceState } from '../../src/engine/caches.js';
import { isKvFormat, KV_FORMATS, type KvFormat } from '../../src/engine/kv-rows.js';
import { DEFAULT_MEMORY_BUDGET_BYTES, estimateMemory, MB } from '../../src/engine/memory-budget.js';
import { loadModel } from '../../src/engine/model.js';
import { defaultSchedule } from '../../src/engine/policy.js';
import { runStep } from '../../src/engine/step.js';
import { wasmHeapBytes } from '../../src/runtime/onnx-runtime.js';
import { streamOfLength } from '../lib/prompts.js';
import { fail, initNodeRuntime, readBytes, REPO_ROOT, runMain } from '../lib/node-env.js';
import { measureInWorkerd } from './workerd.js';
import { estimateJson, type MemoryReport } from './report.js';
import { servedShardsDir } from '../lib/served-model.js';
import { splitMemoryMain } from './split-memory.js';

const DEFAULT_TEXT = resolve(REPO_ROOT, '../shared/data/mpl-2.0.txt');
const t0 = Date.now();
const progress = (m: string) =>
  process.stderr.write(`[memory ${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${m}\n`);

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

async function measureInNode(
  dir: string,
  contexts: readonly number[],
  kv: KvFormat,
  text: string,
  lazy: boolean,
): Promise<MemoryReport[]> {
  settle();
  const baseJs = jsBytes();
  const load = peakSampler(baseJs);
  const max = contexts[contexts.length - 1];
  progress(`loading ${dir} (context ${max}, KV ${kv})`);
  initNodeRuntime();
  // The wasm memory before each shard is read: what the shards before it left behind (load_trace).
  const trace: { file: string; wasm_bytes: number }[] = [];
  const model = await loadModel(
    readFileSync(join(dir, 'manifest.json'), 'utf8'),
    async (file) => {
      trace.push({ file, wasm_bytes: wasmHeapBytes() ?? 0 });
      return readBytes(join(dir, file));
    },
    { contextTokens: max, kvFormat: kv, memoryBudgetBytes: Infinity },
  );
  const loadPeak = load.stop();
  settle();
  const wasmAfterLoad = wasmHeapBytes() ?? 0;
  const jsAfterLoad = Math.max(0, jsBytes() - baseJs);
  const tokens = streamOfLength(model.tokenizer, text, max);
  const seq = new SequenceState(model.config);
  const out: MemoryReport[] = [];
  for (const n of contexts) {
    progress(`prefilling tokens ${seq.length}..${Math.min(n, tokens.length)}`);
    const fill = peakSampler(baseJs);
    // Dense by default: every token's KV rows in every layer, the most a context can take. --schedule default
    // prefills with the served schedule instead, for what its pruned tokens put in the Aux Cache.
    await runStep(model, seq, tokens.slice(seq.length, n), {
      schedule: lazy ? defaultSchedule(model.config.nLayers) : null,
    });
    const fillPeak = fill.stop();
    settle();
    const wasm = wasmHeapBytes() ?? 0;
    const js = Math.max(0, jsBytes() - baseJs);
    const e = estimateMemory(
      { ...model.config, seqLen: seq.length },
      model.quant,
      model.manifest.files.head.map((p) => p.rows),
    );
    out.push({
      runtime: 'node',
      model: model.manifest.name,
      context: seq.length,
      kv_format: kv,
      quant: `${model.quant.format}/${model.quant.kernel}`,
      load_peak_bytes: loadPeak,
      steady_bytes: wasm + js,
      wasm_bytes: wasm,
      js_heap_bytes: js,
      fill_peak_bytes: fillPeak,
      wasm_after_load_bytes: wasmAfterLoad,
      js_after_load_bytes: jsAfterLoad,
      kv_cache_bytes: seq.kv.bytes + seq.aux.bytes,
      aux_cache_bytes: seq.aux.bytes,
      aux_cache_entries: seq.aux.size,
      schedule: lazy ? 'default' : 'dense',
      estimate_bytes: estimateJson(e),
      deployed_isolate_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
      fits_deployed_isolate: Math.max(loadPeak, fillPeak, wasm + js) <= DEFAULT_MEMORY_BUDGET_BYTES,
      measured_in:
        'node: wasm = WebAssembly.Memory size; JS = process.memoryUsage() heapUsed + arrayBuffers (which exclude the wasm memory), net of the process before loading, after a full GC; peaks sampled every 2 ms',
      js_baseline_bytes: baseJs,
      load_trace: trace,
    });
  }
  return out;
}

async function main() {
  // --split G+H: the split as served, each object measured alone in a fresh process (issue 16): `objects` and `max_object_bytes`
  if (process.argv.includes('--split')) return splitMemoryMain(process.argv.slice(2));
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      context: { type: 'string', default: '2048' },
      kv: { type: 'string', default: 'f32' },
      runtime: { type: 'string', default: 'node' },
      text: { type: 'string', default: DEFAULT_TEXT },
      schedule: { type: 'string', default: 'dense' },
      json: { type: 'boolean', default: false },
    },
  });
  const dir = values.model ?? servedShardsDir();
  const contexts = values.context.split(',').map(Number);
  if (!contexts.every((c, i) => Number.isInteger(c) && c >= 2 && (i === 0 || c > contexts[i - 1])))
    fail(`--context ${values.context} must be integers of at least 2, ascending, comma-separated`);
  if (!isKvFormat(values.kv)) fail(`--kv ${values.kv} must be one of ${KV_FORMATS.join(', ')}`);
  if (values.runtime !== 'node' && values.runtime !== 'workerd')
    fail(`--runtime ${values.runtime} must be node or workerd`);
  if (values.schedule !== 'dense' && values.schedule !== 'default')
    fail(`--schedule ${values.schedule} must be dense or default`);
  if (values.schedule === 'default' && values.runtime === 'workerd')
    fail('--schedule default is measured in Node only');
  let text: string;
  try {
    text = readFileSync(values.text, 'utf8');
  } catch (e) {
    fail(`--text ${values.text}: ${(e as Error).message}`);
  }
  const reports =
    values.runtime === 'node'
      ? await measureInNode(dir, contexts, values.kv, text, values.schedule === 'default')
      : await measureInWorkerd({ dir, contexts, kv: values.kv, text, log: progress });
  const mb = (b: number) => `${(b / MB).toFixed(1)} MB`;
  for (const r of reports) {
    progress(
      `${r.model} at ${r.context} tokens, KV ${r.kv_format}, ${r.quant}, in ${r.runtime}: load peak ${mb(r.load_peak_bytes)}, steady ${mb(r.steady_bytes)} ` +
        `(wasm ${mb(r.wasm_bytes)}, JS ${mb(r.js_heap_bytes)}), fill peak ${mb(r.fill_peak_bytes)}; estimate ${mb(r.estimate_bytes.total)}; ` +
        `${r.fits_deployed_isolate ? 'fits' : 'does not fit'} a 128 MB isolate`,
    );
    if (values.json) process.stdout.write(`${JSON.stringify(r)}\n`);
    else process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
  }
}

runMain(main);

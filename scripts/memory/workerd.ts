/**
 * `npm run memory -- --runtime workerd`: the model loaded and filled inside workerd (a frozen snapshot served by scripts/serve.ts,
 * scripts/memory/worker/), read from two sides. Inside: onnxruntime's wasm memory, and the bytes of the
 * caches and of the embedding table (the JS heap itself is not observable there). Outside: the workerd process's resident set
 * (VmRSS) and its peak (VmHWM) from /proc, net of the process before the model was loaded; they
 * include what workerd allocates for the isolate beyond the JS heap and the wasm memory.
 */
import { mkdirSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import type { KvFormat } from '../../src/engine/kv-rows.js';
import { DEFAULT_MEMORY_BUDGET_BYTES } from '../../src/engine/memory-budget.js';
import type { MemoryReport } from './report.js';
import { fail, REPO_ROOT, SHARDS_ROOT } from '../lib/node-env.js';
import { findWorkerds, residentBytes, startWranglerDev, waitReady } from '../lib/wrangler-dev.js';

interface LoadAnswer {
  wasm_bytes: number;
  quant: string;
  estimate_bytes: MemoryReport['estimate_bytes'];
  error?: string;
}
interface FillAnswer {
  wasm_bytes: number;
  kv_cache_bytes: number;
  /** the embedding table's rows on the JS heap (src/model/embedding-table.ts) */
  embedding_bytes: number;
  tokens: number;
  estimate_bytes: MemoryReport['estimate_bytes'];
  error?: string;
}

const FILL_STEP = 2048;

/** One report per context in `o.contexts` (ascending): the model loaded once at the largest, the cache filled in steps. */
export async function measureInWorkerd(o: {
  dir: string;
  contexts: readonly number[];
  kv: KvFormat;
  text: string;
  log: (m: string) => void;
}): Promise<MemoryReport[]> {
  const name = basename(resolve(o.dir));
  if (resolve(o.dir) !== join(SHARDS_ROOT, name))
    fail(`--runtime workerd serves shards from ${SHARDS_ROOT}: --model must be a directory there`);
  mkdirSync(join(REPO_ROOT, '.bench-cache'), { recursive: true });
  const logFile = join(REPO_ROOT, '.bench-cache', 'memory-workerd.log');
  // Frozen: a snapshot of the Worker and of this model's shards, so that edits and shard builds elsewhere in the
  // checkout neither reload it mid-fill nor change what it reads. serve.ts runs it without wrangler's inspector,
  // whose per-chunk devtools events once exhausted workerd's descriptors; the shard reads need no pacing.
  const dev = await startWranglerDev(
    'scripts/memory/worker/wrangler.toml',
    logFile,
    {},
    { freeze: { models: [name] } },
  );
  o.log(`workerd: scripts/serve.ts (pid ${dev.child.pid}) on ${dev.base}, log ${logFile}`);
  try {
    await waitReady(`${dev.base}/noop`, dev.child, 180_000);
    const pids = findWorkerds(dev.child.pid!);
    if (!pids.length) fail('no workerd process found under scripts/serve.ts');
    const read = () => pids.map(residentBytes);
    const before = read();
    const context = o.contexts[o.contexts.length - 1];
    o.log(`loading ${name} in workerd (context ${context}, KV ${o.kv})`);
    const load = (await (
      await fetch(`${dev.base}/load?model=${encodeURIComponent(name)}&context=${context}&kv=${o.kv}`)
    ).json()) as LoadAnswer;
    if (load.error) throw new Error(`workerd /load: ${load.error}`);
    const afterLoad = read();
    const out: MemoryReport[] = [];
    for (const upTo of o.contexts) {
      // In steps of at most FILL_STEP tokens: one request per step stays well inside fetch's 300 s header timeout.
      let fill: FillAnswer | undefined;
      for (let at = Math.min(upTo, (out.at(-1)?.context ?? 0) + FILL_STEP); ; at = Math.min(upTo, at + FILL_STEP)) {
        o.log(`prefilling to ${at} tokens in workerd`);
        const res = await fetch(`${dev.base}/fill`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: name, context, kv: o.kv, text: o.text, upTo: at }),
        });
        fill = (await res.json()) as FillAnswer;
        if (fill.error) throw new Error(`workerd /fill: ${fill.error}`);
        if (at === upTo) break;
      }
      const afterFill = read();
      // The Worker's runtime is the workerd whose resident set grew; wrangler's entry proxy barely moves.
      let k = 0;
      for (let i = 1; i < pids.length; i++)
        if (afterFill[i].rss - before[i].rss > afterFill[k].rss - before[k].rss) k = i;
      const base = before[k].rss;
      out.push({
        runtime: 'workerd',
        model: name,
        context: fill.tokens,
        kv_format: o.kv,
        quant: load.quant,
        load_peak_bytes: afterLoad[k].hwm - base,
        steady_bytes: afterFill[k].rss - base,
        wasm_bytes: fill.wasm_bytes,
        js_heap_bytes: fill.kv_cache_bytes + fill.embedding_bytes,
        fill_peak_bytes: afterFill[k].hwm - base,
        wasm_after_load_bytes: load.wasm_bytes,
        kv_cache_bytes: fill.kv_cache_bytes,
        embedding_bytes: fill.embedding_bytes,
        estimate_bytes: fill.estimate_bytes,
        deployed_isolate_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
        fits_deployed_isolate: afterFill[k].hwm - base <= DEFAULT_MEMORY_BUDGET_BYTES,
        measured_in:
          'workerd: wasm = WebAssembly.Memory size inside the isolate; js_heap_bytes = the bytes of the KV and Aux caches and of the embedding table (workerd exposes no JS heap figure); ' +
          "load_peak/steady/fill_peak = the workerd process's VmHWM/VmRSS from /proc net of its VmRSS before loading (they include workerd's own allocations for the isolate)",
        workerd_rss_before_bytes: base,
      });
    }
    return out;
  } finally {
    await dev.stop();
  }
}

/**
 * Where a dense prefill's time goes (issue 27).
 *
 *   LAZY_EDGE_MEMORY_BUDGET_MB=off flock /tmp/lazy-edge-cpu.lock \
 *     node --import tsx scripts/probes/prefill-profile.ts [--model DIR] [--tokens 512,2048] [--parts layer,step,step-same,step-lazy] [--json FILE]
 *
 * step:  the whole model, one dense runStep per length (the engine's chunks), every session's runs timed from JS:
 *        layer runs, embedding + head, and the rest (JavaScript between sessions: KV writes, gathers, copies).
 *        step-same: layer 0's session in place of every layer's; step-lazy: the default LazyLLM schedule.
 * layer: layer 0's shard (the same graph as every layer) under onnxruntime's own profiler, fed the engine's
 *        chunk schedule for a dense prefill of each length (chunk j's past = the rows of chunks < j, random
 *        values: speed depends on shapes only). Node times are summed by kind of work (ort-profile.ts kindOf);
 *        "inside OrtRun, between nodes" is model_run minus the nodes; "copies in/out, JS" is the wall time of
 *        session.run minus model_run. Times x 30 layers estimate the model's layers.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execSync } from 'node:child_process';
import * as ort from 'onnxruntime-web/wasm';
import { SequenceState } from '../../src/engine/caches.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { prefillChunks, runStep } from '../../src/engine/step.js';
import { defaultSchedule, formatSchedule, stepRankings } from '../../src/engine/policy.js';
import { LAYER_IO } from '../../src/model/shard-io.js';
import type { GraphSession } from '../../src/runtime/onnx-runtime.js';
import { initNodeRuntime, loadModelFromDir, REPO_ROOT } from '../lib/node-env.js';
import { streamOfLength } from '../lib/prompts.js';
import { servedShardsDir } from '../lib/served-model.js';
import { kindOf, profiledSession, type Profile } from './ort-profile.js';

const load = () => execSync('cat /proc/loadavg').toString().split(' ').slice(0, 3).join(' ');
const log = (m: string) => process.stderr.write(`[prefill-profile] ${m}\n`);

function timed(s: GraphSession, clock: Record<string, number>, key: string): GraphSession {
  return {
    name: s.name,
    release: () => s.release(),
    async run(feeds) {
      const t = performance.now();
      try {
        return await s.run(feeds);
      } finally {
        clock[key] += performance.now() - t;
      }
    },
  };
}

/**
 * Whole-model dense prefill, split into layer runs, vocabulary runs and the JS side; `cpuMs` is the
 * process's on-CPU time (one inference thread: what the shared machine's load does not inflate).
 * sameLayer: every layer runs layer 0's session (the same weights 30 times: what the layers' own
 * weights and sessions cost against one session's).
 */
export async function stepSplit(dir: string, lengths: number[], sameLayer = false, lazy = false) {
  const base = await loadModelFromDir(dir, { contextTokens: Math.max(...lengths) + 1, memoryBudgetBytes: Infinity });
  const clock: Record<string, number> = { layers: 0, vocab: 0 };
  const perLayer = new Float64Array(base.layers.length);
  const layers = base.layers.map((s, l) => {
    const inner = sameLayer ? base.layers[0] : s;
    return {
      name: s.name,
      release: () => s.release(),
      async run(feeds: Parameters<GraphSession['run']>[0]) {
        const t = performance.now();
        try {
          return await inner.run(feeds);
        } finally {
          const d = performance.now() - t;
          clock.layers += d;
          perLayer[l] += d;
        }
      },
    } as GraphSession;
  });
  const model: LoadedModel = {
    ...base,
    layers,
    head: base.head.map((p) => ({ ...p, session: timed(p.session, clock, 'vocab') })),
  };
  const text = readFileSync(join(REPO_ROOT, '../shared/data/lgpl-2.1.txt'), 'utf8');
  const rows = [];
  // a short warm-up step so that first-run costs do not land on the first length
  await runStep(model, new SequenceState(model.config), streamOfLength(model.tokenizer, text, 16), { schedule: null });
  for (const n of lengths) {
    const prompt = streamOfLength(model.tokenizer, text, n);
    clock.layers = clock.vocab = 0;
    perLayer.fill(0);
    const l0 = load();
    const c0 = process.cpuUsage();
    const t = performance.now();
    const schedule = lazy ? defaultSchedule(model.config.nLayers) : null;
    const r = await runStep(model, new SequenceState(model.config), prompt, {
      schedule,
      ranking: stepRankings(schedule?.signal, null)(0, prompt.length),
    });
    const ms = performance.now() - t;
    const cu = process.cpuUsage(c0);
    const cpuMs = (cu.user + cu.system) / 1000;
    rows.push({
      tokens: n,
      sameLayer,
      schedule: lazy ? formatSchedule(defaultSchedule(model.config.nLayers)) : 'dense',
      computedPerLayer: r.stats.computedPerLayer,
      ms,
      cpuMs,
      layerRunsMs: clock.layers,
      vocabRunsMs: clock.vocab,
      jsMs: ms - clock.layers - clock.vocab,
      perLayerMs: [...perLayer].map((x) => Math.round(x)),
      load: l0,
    });
    log(
      `step ${n}${sameLayer ? ' (layer 0 session x30)' : ''}${lazy ? ' lazy (default schedule)' : ''}: ${ms.toFixed(0)} ms wall, ${cpuMs.toFixed(0)} ms on-CPU = layer runs ${clock.layers.toFixed(0)} + embed/head ${clock.vocab.toFixed(0)} + JS ${(ms - clock.layers - clock.vocab).toFixed(0)} (load ${l0})`,
    );
    log(`   per layer ms: ${[...perLayer].map((x) => x.toFixed(0)).join(' ')}`);
    if (lazy) log(`   query rows per layer: ${r.stats.computedPerLayer.join(' ')}`);
  }
  return rows;
}

const rand = (n: number, s = 1) => {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (Math.random() * 2 - 1) * s;
  return a;
};

/** The feeds of chunk [a, b) of a dense n-token prefill for a layer graph with LAYER_IO. */
export function chunkFeeds(a: number, b: number, dim: number, kvDim: number): Record<string, ort.Tensor> {
  const io = LAYER_IO.inputs;
  const f = (d: Float32Array, dims: number[]) => new ort.Tensor('float32', d, dims);
  return {
    [io.x]: f(rand((b - a) * dim), [b - a, dim]), // hidden rows of order 1 (the layer's norm divides the scale out)
    [io.pos]: f(
      Float32Array.from({ length: b - a }, (_, j) => a + j),
      [b - a],
    ),
    [io.pastK]: f(rand(a * kvDim, 2), [a, kvDim]),
    [io.pastV]: f(rand(a * kvDim, 0.5), [a, kvDim]),
    [io.pastKF16]: new ort.Tensor('float16', new Uint16Array(0), [0, kvDim]),
    [io.pastVF16]: new ort.Tensor('float16', new Uint16Array(0), [0, kvDim]),
    [io.pastKI8]: new ort.Tensor('int8', new Int8Array(0), [0, kvDim]),
    [io.pastVI8]: new ort.Tensor('int8', new Int8Array(0), [0, kvDim]),
    [io.pastKI8Scale]: f(new Float32Array(0), [0, 1]),
    [io.pastVI8Scale]: f(new Float32Array(0), [0, 1]),
    [io.pastPos]: f(
      Float32Array.from({ length: a }, (_, j) => j),
      [a],
    ),
    [io.attnRows]: new ort.Tensor('int64', BigInt64Array.of(0n, 1n), [2]),
  };
}

export interface KindRow {
  kind: string;
  ms: number;
}

/** Sums a profile by kind of work; `wallMs` is the JS wall time of the runs the profile covers. */
export function byKind(
  p: Profile,
  wallMs: number,
  skipRuns: number,
): { rows: KindRow[]; byOp: Record<string, number> } {
  // drop the warm-up runs' node events: they come first, in run order
  const perRun = p.nodes.length / p.runUs.length;
  const nodes = p.nodes.slice(Math.round(perRun * skipRuns));
  const runUs = p.runUs.slice(skipRuns).reduce((a, b) => a + b, 0);
  const sums = new Map<string, number>();
  const byOp: Record<string, number> = {};
  let nodeUs = 0;
  for (const n of nodes) {
    const k = kindOf(n);
    sums.set(k, (sums.get(k) ?? 0) + n.us);
    byOp[n.op] = (byOp[n.op] ?? 0) + n.us / 1000;
    nodeUs += n.us;
  }
  const rows = [...sums].map(([kind, us]) => ({ kind, ms: us / 1000 }));
  rows.push({ kind: 'inside OrtRun, between nodes', ms: (runUs - nodeUs) / 1000 });
  rows.push({ kind: 'copies in/out of the session, JS', ms: wallMs - runUs / 1000 });
  rows.sort((x, y) => y.ms - x.ms);
  return { rows, byOp };
}

/** Runs a layer graph over the chunk schedule of a dense n-token prefill under the profiler. */
export async function profileLayer(
  bytes: Uint8Array,
  n: number,
  dim: number,
  kvDim: number,
  nHeads: number,
  feedsOf: (a: number, b: number) => Record<string, ort.Tensor> = (a, b) => chunkFeeds(a, b, dim, kvDim),
  sessionOptions: Record<string, unknown> = {},
) {
  const { session, end } = await profiledSession(bytes, sessionOptions);
  const chunks = prefillChunks(n, n, nHeads);
  const bounds = Array.from({ length: chunks }, (_, c) => [
    Math.floor((c * n) / chunks),
    Math.floor(((c + 1) * n) / chunks),
  ]);
  const feeds = bounds.map(([a, b]) => feedsOf(a, b));
  // warm-up: the whole schedule once (wasm memory growth and first-run costs), then the measured pass
  for (const f of feeds) await session.run(f);
  const t = performance.now();
  for (const f of feeds) await session.run(f);
  const wallMs = performance.now() - t;
  const p = end();
  await session.release();
  const k = byKind(p, wallMs, chunks);
  // the weight products by shape: [rows, in] x [in, out]
  const perRun = p.nodes.length / p.runUs.length;
  const matrices: Record<string, number> = {};
  for (const nd of p.nodes.slice(Math.round(perRun * chunks)))
    if (kindOf(nd) === 'projections') {
      const key = `${nd.op} ->${nd.outputs[0]?.[1]}`;
      matrices[key] = (matrices[key] ?? 0) + nd.us / 1000;
    }
  return { chunks, rowsPerChunk: Math.round(n / chunks), wallMs, ...k, matrices };
}

async function main() {
  const { values } = parseArgs({
    options: {
      model: { type: 'string', default: servedShardsDir() },
      tokens: { type: 'string', default: '512,2048' },
      parts: { type: 'string', default: 'layer,step' },
      json: { type: 'string' },
    },
  });
  const lengths = values.tokens.split(',').map(Number);
  const parts = values.parts.split(',');
  const dir = values.model;
  const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  const { dim, kvDim, nHeads, nLayers } = manifest.config;
  const out: Record<string, unknown> = { model: dir, loadStart: load(), date: new Date().toISOString() };
  initNodeRuntime();
  if (parts.includes('layer')) {
    const bytes = new Uint8Array(readFileSync(join(dir, manifest.files.layers[0].file)));
    const layer: Record<number, unknown> = {};
    for (const n of lengths) {
      const r = await profileLayer(bytes, n, dim, kvDim, nHeads);
      layer[n] = r;
      log(
        `layer 0 at ${n} tokens: ${r.chunks} chunks of ~${r.rowsPerChunk} rows, ${r.wallMs.toFixed(0)} ms (x${nLayers} = ${((r.wallMs * nLayers) / 1000).toFixed(1)} s)`,
      );
      log(
        `   products by weight: ${Object.entries(r.matrices)
          .map(([m, ms]) => `${m} ${ms.toFixed(1)}`)
          .join(', ')}`,
      );
      for (const k of r.rows)
        log(
          `   ${k.kind.padEnd(42)} ${k.ms.toFixed(1).padStart(8)} ms  ${((100 * k.ms) / r.wallMs).toFixed(1).padStart(5)}%`,
        );
    }
    out.layer = layer;
  }
  if (parts.includes('step')) out.step = await stepSplit(dir, lengths);
  if (parts.includes('step-same')) out.stepSame = await stepSplit(dir, lengths, true);
  if (parts.includes('step-lazy')) out.stepLazy = await stepSplit(dir, lengths, false, true);
  out.loadEnd = load();
  if (values.json) writeFileSync(values.json, JSON.stringify(out, null, 2));
}

if (process.argv[1]?.endsWith('prefill-profile.ts')) await main();

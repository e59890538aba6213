/**
 * scripts/quant/bench.ts's child process: one model in one strategy, in a process of its own (the
 * wasm heap never shrinks, so memory figures are per process). Includes its own dense forward over
 * the model's sessions (all positions at once) for perplexity.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SequenceState } from '../../src/engine/caches.js';
import { decodeLoop, nextStep } from '../../src/engine/decode-loop.js';
import { tokenNll } from '../../src/engine/logits.js';
import { MB } from '../../src/engine/memory-budget.js';
import { loadModel, type LoadedModel } from '../../src/engine/model.js';
import { embedStep, runLayers } from '../../src/engine/step.js';
import { HEAD_IO } from '../../src/model/shard-io.js';
import { createGraphSession } from '../../src/runtime/onnx-runtime.js';
import { GraphBuilder } from '../../src/shards/onnx-builder.js';
import { threadCpuMs } from '../lib/clock.js';
import { initNodeRuntime, readBytes } from '../lib/node-env.js';
import { DECODE_CONTEXT } from './models.js';
import { heapMb, watchWasmMemory } from './wasm-heap.js';

export interface ChildJob {
  kind: 'model' | 'runtime';
  dir: string;
  fold: boolean;
  lengths: number[];
  reps: Record<string, number>;
  decode: number;
  /** length -> prompt ids */
  prompts: Record<string, number[]>;
  /** teacher-forced windows for perplexity, each starting with BOS */
  pplWindows: number[][];
  /** prompt lengths run once, untimed, before measuring (allocation, prepacking, heap growth) */
  warmup: number[];
}

export interface Timing {
  cpuMs: number;
  wallMs: number;
}

export interface ChildResult {
  loadMs: Timing;
  heapAfterLoadMb: number;
  rssAfterLoadMb: number;
  prefill: Record<string, { cpuMs: number[]; wallMs: number[] }>;
  /** decode in chunks: the best chunk's rate is the figure (noise only ever slows a chunk down) */
  decode: {
    tokens: number;
    cpuMs: number;
    wallMs: number;
    chunks: { tokens: number; cpuMs: number; wallMs: number }[];
  };
  /** wasm heap after the prefills at DECODE_CONTEXT tokens and the decode */
  heapAfterContextMb: number;
  heapPeakMb: number;
  peakRssMb: number;
  nll: { sum: number; count: number } | null;
}

const rssMb = () => process.memoryUsage().rss / MB;

async function timed<T>(f: () => Promise<T>): Promise<[T, Timing]> {
  const c = threadCpuMs();
  const w = performance.now();
  const r = await f();
  return [r, { cpuMs: threadCpuMs() - c, wallMs: performance.now() - w }];
}

/** Logits [n, vocab] for every position of `ids` in one dense pass through the model's own layers. */
async function allLogits(model: LoadedModel, ids: number[]): Promise<Float32Array> {
  const { dim } = model.config;
  const n = ids.length;
  const { frontier } = await runLayers(model, new SequenceState(model.config), await embedStep(model, 0, ids), {
    schedule: null,
  });
  // Dense: every token is carried out of the last layer, in order. One head run over all n rows (quant-bench models have one head part).
  return (await model.head[0].session.run({ [HEAD_IO.inputs.x]: { data: frontier.hidden, dims: [n, dim] } }))[
    HEAD_IO.outputs.logits
  ].data as Float32Array;
}

/** Teacher-forced NLL of a window: the sum over positions of -log p(next token). */
function windowNll(logits: Float32Array, ids: number[], vocab: number): number {
  let nll = 0;
  for (let i = 0; i + 1 < ids.length; i++) nll += tokenNll(logits.subarray(i * vocab, (i + 1) * vocab), ids[i + 1]);
  return nll;
}

export async function runChild(job: ChildJob): Promise<ChildResult | { heapMb: number; rssMb: number }> {
  watchWasmMemory();
  initNodeRuntime();
  if (job.kind === 'runtime') {
    const b = new GraphBuilder('identity');
    b.output(b.input('x', 'float32', [1]), 'y', 'float32', [1]);
    const s = await createGraphSession('identity', b.toBytes());
    await s.run({ x: { data: new Float32Array(1), dims: [1] } });
    return { heapMb: heapMb(), rssMb: rssMb() };
  }
  const log = (m: string) => process.stderr.write(`${m}\n`);
  const manifest = readFileSync(join(job.dir, 'manifest.json'), 'utf8');
  const [model, loadMs] = await timed(() =>
    loadModel(manifest, async (f) => readBytes(join(job.dir, f)), {
      memoryBudgetBytes: Infinity,
      foldDequantize: job.fold,
    }),
  );
  const heapAfterLoadMb = heapMb();
  const rssAfterLoadMb = rssMb();
  log(`loaded in ${loadMs.wallMs.toFixed(0)} ms; wasm heap ${heapAfterLoadMb.toFixed(1)} MB`);

  // Warm-up: first runs allocate, prepack and grow the heap.
  for (const len of job.warmup) {
    const warm = decodeLoop(model, new SequenceState(model.config), job.prompts[String(len)], {
      schedule: null,
      pick: () => 5,
    });
    await nextStep(warm); // the prefill
    await nextStep(warm); // one decode step
    log(`warm-up ${len} done`);
  }

  const prefill: ChildResult['prefill'] = {};
  const decode: ChildResult['decode'] = { tokens: 0, cpuMs: 0, wallMs: 0, chunks: [] };
  let heapAfterContextMb = NaN;
  for (const len of job.lengths) {
    const prompt = job.prompts[String(len)];
    const p = (prefill[String(len)] = { cpuMs: [] as number[], wallMs: [] as number[] });
    for (let r = 0; r < job.reps[String(len)]; r++) {
      const loop = decodeLoop(model, new SequenceState(model.config), prompt, { schedule: null });
      const [, t] = await timed(() => nextStep(loop));
      p.cpuMs.push(t.cpuMs);
      p.wallMs.push(t.wallMs);
      log(`prefill ${len}: ${t.cpuMs.toFixed(0)} ms CPU (${t.wallMs.toFixed(0)} ms wall)`);
      if (len === DECODE_CONTEXT && r === 0) {
        const chunk = Math.max(1, Math.floor(job.decode / 4));
        for (let done = 0; done < job.decode; done += chunk) {
          const n = Math.min(chunk, job.decode - done);
          const [, d] = await timed(async () => {
            for (let k = 0; k < n; k++) await nextStep(loop);
          });
          decode.chunks.push({ tokens: n, ...d });
          decode.tokens += n;
          decode.cpuMs += d.cpuMs;
          decode.wallMs += d.wallMs;
        }
        const best = Math.max(...decode.chunks.map((c) => (c.tokens * 1000) / c.cpuMs));
        log(`decode: ${best.toFixed(1)} tok/s CPU (best chunk of ${chunk})`);
      }
    }
    if (len === DECODE_CONTEXT) heapAfterContextMb = heapMb();
  }
  let nll: ChildResult['nll'] = null;
  if (job.pplWindows.length) {
    nll = { sum: 0, count: 0 };
    for (const w of job.pplWindows) {
      nll.sum += windowNll(await allLogits(model, w), w, model.config.vocabSize);
      nll.count += w.length - 1;
    }
    log(`perplexity ${Math.exp(nll.sum / nll.count).toFixed(4)} over ${nll.count} tokens`);
  }
  return {
    loadMs,
    heapAfterLoadMb,
    rssAfterLoadMb,
    prefill,
    decode,
    heapAfterContextMb,
    heapPeakMb: heapMb(),
    peakRssMb: (process.resourceUsage().maxRSS * 1024) / MB,
    nll,
  };
}

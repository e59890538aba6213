/**
 * scripts/quant/bench.ts --gguf FILE | --model DIR: the weight kernels of a GGUF model (src/model/quant.ts
 * GgufKernels) measured on its real shapes, one wasm thread. What is measured (the configurations, the
 * prompts), the child process that measures one configuration, and the docs/QUANTIZATION.md section.
 *
 * Fidelity is against the `dequant` build, which computes the file's exact weights in f32 (it matches the
 * numpy exact-weights reference to a mean KL of 3e-8: test/node/smollm2-reference.test.ts), so it stands
 * for the exact weights in-run: mean KL(dequant || configuration) of the full next-token distributions and
 * argmax agreement, teacher-forced over fixed text windows.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SequenceState } from '../../src/engine/caches.js';
import { decodeLoop, nextStep } from '../../src/engine/decode-loop.js';
import { argmax, logSoftmax } from '../../src/engine/logits.js';
import { MB } from '../../src/engine/memory-budget.js';
import { loadModel, type LoadedModel } from '../../src/engine/model.js';
import { embedStep, runLayers } from '../../src/engine/step.js';
import { ggufWeightBytes, parseGgufKernels, type GgufKernels } from '../../src/model/quant.js';
import { HEAD_IO } from '../../src/model/shard-io.js';
import { threadCpuMs } from '../lib/clock.js';
import { readBytes } from '../lib/node-env.js';
import type { ModelConfig } from '../../src/model/config.js';
import { heapMb, watchWasmMemory } from './wasm-heap.js';
import { prefillFlops, type PeakResult } from './peak.js';
import type { Machine } from './report.js';

export interface GgufConfig {
  id: string;
  /** the manifest's kernel string (attn=..,ffn=..,head=..,embed=..) */
  kernel: string;
  headParts: number;
  what: string;
}

/** The configurations, the reference first. Heads that MatMulNBits decodes per run are cut into 8 row parts (12 MB of f32 each). */
export const GGUF_CONFIGS: GgufConfig[] = [
  {
    id: 'dequant',
    kernel: 'dequant',
    headParts: 1,
    what: 'file blocks unpacked and folded to f32 at load (the reference)',
  },
  {
    id: 'nbits',
    kernel: 'attn=nbits,ffn=nbits,head=nbits8,embed=q8',
    headParts: 8,
    what: 'MatMulNBits exact Q4_1 (zp 0 + m·Σx correction), head MatMulNBits 8-bit exact Q8_0',
  },
  {
    id: 'nbits-zp',
    kernel: 'attn=nbits-zp,ffn=nbits-zp,head=nbits8,embed=q8',
    headParts: 8,
    what: 'MatMulNBits Q4_1 with float zero point −m/d, head 8-bit exact',
  },
  {
    id: 'integer',
    kernel: 'attn=integer,ffn=integer,head=integer,embed=q8',
    headParts: 1,
    what: 'int8 per channel (symmetric) re-quantized, MatMulInteger everywhere, head too',
  },
  {
    id: 'integer2',
    kernel: 'attn=integer2,ffn=integer2,head=integer,embed=q8',
    headParts: 1,
    what: 'int8 per channel asymmetric, activations as two int8 terms; head int8 MatMulInteger',
  },
  {
    id: 'integer2-all',
    kernel: 'attn=integer2,ffn=integer2,head=integer2,embed=q8',
    headParts: 1,
    what: 'integer2 layers and head',
  },
  {
    id: 'integer2-head8',
    kernel: 'attn=integer2,ffn=integer2,head=nbits8,embed=q8',
    headParts: 8,
    what: 'integer2 layers, head MatMulNBits 8-bit exact Q8_0',
  },
  {
    id: 'integer2-head4',
    kernel: 'attn=integer2,ffn=integer2,head=nbits-zp,embed=q8',
    headParts: 8,
    what: 'integer2 layers, head re-quantized to 4-bit blocks (MatMulNBits)',
  },
  {
    id: 'integer2-emb4',
    kernel: 'attn=integer2,ffn=integer2,head=integer,embed=q4',
    headParts: 1,
    what: 'integer2 layers and int8 head, embedding re-quantized to 4-bit rows',
  },
  {
    id: 'attn8-ffn4',
    kernel: 'attn=integer2,ffn=nbits,head=nbits8,embed=q8',
    headParts: 8,
    what: 'attention integer2, FFN MatMulNBits exact Q4_1, head 8-bit exact',
  },
  {
    id: 'attn4-ffn8',
    kernel: 'attn=nbits,ffn=integer2,head=nbits8,embed=q8',
    headParts: 8,
    what: 'attention MatMulNBits exact Q4_1, FFN integer2, head 8-bit exact',
  },
];

export function kernelsOf(c: GgufConfig): GgufKernels {
  const r = parseGgufKernels(c.kernel);
  if ('error' in r) throw new Error(`${c.id}: ${r.error}`);
  return r.kernels;
}

/** Text windows for fidelity: this many tokens from each file, teacher-forced, scored every FIDELITY_STRIDE positions. */
export const FIDELITY_TOKENS = 1024;
export const FIDELITY_STRIDE = 4;
export const FIDELITY_TEXTS = ['apache-2.0.txt', 'mpl-2.0.txt'];
/** The timing prompt's text. */
export const TIMING_TEXT = 'lgpl-2.1.txt';
export const PREFILL_LENGTHS = [512, 2048];
export const DECODE_TOKENS = 8;

export interface GgufChildJob {
  kind: 'gguf';
  dir: string;
  /** token ids of the timing prompt (at least the longest prefill) */
  prompt: number[];
  windows: number[][];
  /** where the reference's log-probabilities are written (the reference run) or read from */
  referenceFile: string;
  reference: boolean;
  reps: number;
}

export interface GgufChildResult {
  loadMs: number;
  heapAfterLoadMb: number;
  heapAfter2048Mb: number;
  heapPeakMb: number;
  prefillCpuMs: Record<string, number>;
  prefillWallMs: Record<string, number>;
  decodeTokS: number;
  decodeWallTokS: number;
  fidelity: { positions: number; meanKl: number; maxKl: number; argmaxAgreement: number } | null;
}

/** Positions scored in a window: every FIDELITY_STRIDE-th, from the 16th on (the first few predict from almost nothing). */
const scored = (n: number) =>
  Array.from({ length: n }, (_, i) => i).filter((i) => i >= 15 && (i - 15) % FIDELITY_STRIDE === 0);

/** Logits at `positions` of one dense, teacher-forced pass over `ids` (the engine's own layers and chunks): [positions.length, vocab]. */
async function windowLogits(model: LoadedModel, ids: number[], positions: number[]): Promise<Float32Array> {
  const { dim, vocabSize } = model.config;
  const into = await embedStep(model, 0, ids);
  const { frontier } = await runLayers(model, new SequenceState(model.config), into, { schedule: null });
  const rowOf = new Map(Array.from(frontier.carried, (t, j) => [t, j]));
  const p = positions.length;
  const rows = new Float32Array(p * dim); // [p, dim]
  positions.forEach((at, i) =>
    rows.set(frontier.hidden.subarray(rowOf.get(at)! * dim, (rowOf.get(at)! + 1) * dim), i * dim),
  );
  const logits = new Float32Array(p * vocabSize); // [p, vocab]
  for (const part of model.head) {
    const l = (await part.session.run({ [HEAD_IO.inputs.x]: { data: rows, dims: [p, dim] } }))[HEAD_IO.outputs.logits]
      .data as Float32Array; // [p, part.rows]
    for (let i = 0; i < p; i++) logits.set(l.subarray(i * part.rows, (i + 1) * part.rows), i * vocabSize + part.start);
  }
  return logits;
}

export async function runGgufChild(job: GgufChildJob, initRuntime: () => void): Promise<GgufChildResult> {
  watchWasmMemory();
  initRuntime();
  const log = (m: string) => process.stderr.write(`${m}\n`);
  const manifest = readFileSync(join(job.dir, 'manifest.json'), 'utf8');
  const w0 = performance.now();
  const model = await loadModel(manifest, async (f) => readBytes(join(job.dir, f)), { memoryBudgetBytes: Infinity });
  const loadMs = performance.now() - w0;
  const heapAfterLoadMb = heapMb();
  log(`loaded in ${loadMs.toFixed(0)} ms; wasm heap ${heapAfterLoadMb.toFixed(1)} MB`);

  const prefillCpuMs: Record<string, number> = {};
  const prefillWallMs: Record<string, number> = {};
  let decodeTokS = NaN;
  let decodeWallTokS = NaN;
  for (const len of PREFILL_LENGTHS) {
    for (let r = 0; r < job.reps; r++) {
      const loop = decodeLoop(model, new SequenceState(model.config), job.prompt.slice(0, len), { schedule: null });
      const c0 = threadCpuMs();
      const t0 = performance.now();
      await nextStep(loop);
      const cpu = threadCpuMs() - c0;
      const wall = performance.now() - t0;
      prefillCpuMs[len] = Math.min(prefillCpuMs[len] ?? Infinity, cpu);
      prefillWallMs[len] = Math.min(prefillWallMs[len] ?? Infinity, wall);
      log(`prefill ${len}: ${cpu.toFixed(0)} ms CPU (${wall.toFixed(0)} ms wall)`);
      if (len === PREFILL_LENGTHS.at(-1) && r === 0) {
        // Decode at this context: one token a step, the best half of the run (noise only slows it down).
        const cpuPer: number[] = [];
        const wallPer: number[] = [];
        for (let k = 0; k < DECODE_TOKENS; k++) {
          const d0 = threadCpuMs();
          const dw = performance.now();
          await nextStep(loop);
          cpuPer.push(threadCpuMs() - d0);
          wallPer.push(performance.now() - dw);
        }
        const best = (xs: number[]) =>
          xs
            .sort((a, b) => a - b)
            .slice(0, Math.max(1, xs.length >> 1))
            .reduce((a, b) => a + b, 0) / Math.max(1, xs.length >> 1);
        decodeTokS = 1000 / best(cpuPer);
        decodeWallTokS = 1000 / best(wallPer);
        log(`decode at ${len + 1}: ${decodeTokS.toFixed(2)} tok/s CPU`);
      }
    }
  }
  const heapAfter2048Mb = heapMb();

  // Fidelity: full distributions at the scored positions; the reference writes them, the others compare.
  const vocab = model.config.vocabSize;
  const all: Float32Array[] = [];
  for (const w of job.windows) {
    const logits = await windowLogits(model, w, scored(w.length));
    for (let i = 0; i < logits.length / vocab; i++)
      all.push(Float32Array.from(logSoftmax(logits.subarray(i * vocab, (i + 1) * vocab))));
  }
  let fidelity: GgufChildResult['fidelity'] = null;
  if (job.reference) {
    const flat = new Float32Array(all.length * vocab);
    all.forEach((lp, i) => flat.set(lp, i * vocab));
    writeFileSync(job.referenceFile, flat);
    fidelity = { positions: all.length, meanKl: 0, maxKl: 0, argmaxAgreement: 1 };
  } else {
    const b = readFileSync(job.referenceFile);
    const ref = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    if (ref.length !== all.length * vocab)
      throw new Error(`reference holds ${ref.length / vocab} positions, this run ${all.length}`);
    let sum = 0;
    let max = 0;
    let agree = 0;
    all.forEach((q, i) => {
      const p = ref.subarray(i * vocab, (i + 1) * vocab);
      let kl = 0;
      for (let v = 0; v < vocab; v++) if (p[v] > -80) kl += Math.exp(p[v]) * (p[v] - q[v]);
      kl = Math.max(0, kl);
      sum += kl;
      max = Math.max(max, kl);
      if (argmax(p) === argmax(q)) agree++;
    });
    fidelity = { positions: all.length, meanKl: sum / all.length, maxKl: max, argmaxAgreement: agree / all.length };
    log(
      `fidelity over ${all.length} positions: mean KL ${fidelity.meanKl.toExponential(2)}, argmax agreement ${(100 * fidelity.argmaxAgreement).toFixed(1)}%`,
    );
  }
  return {
    loadMs,
    heapAfterLoadMb,
    heapAfter2048Mb,
    heapPeakMb: heapMb(),
    prefillCpuMs,
    prefillWallMs,
    decodeTokS,
    decodeWallTokS,
    fidelity,
  };
}

export interface GgufRow {
  id: string;
  kernel: string;
  what: string;
  headParts: number;
  shardMb: number;
  bytes: ReturnType<typeof ggufWeightBytes>;
  nLayers: number;
  result: GgufChildResult;
  /** the dequant row of the same run (ratios compare rows of one run only: the shared machine's speed drifts between runs) */
  ref?: { prefillCpuMs: Record<string, number>; decodeTokS: number };
  /** which run of a merged report measured the row (1 = the earliest) */
  run?: number;
  /** the wasm MatMul peak measured in the row's own run (absent in runs before it was measured) */
  peak?: PeakResult;
}

export interface GgufReport {
  command: string;
  date: string;
  commit: string;
  model: string;
  gguf: string;
  machine: Machine;
  runtimeHeapMb: number;
  /** KV cache bytes per token of context in f32, every layer: nLayers × 2 × kvDim × 4 */
  kvPerTokenF32: number;
  /** the model's config (for the prefill FLOPs; absent in reports before the peak row) */
  config?: ModelConfig;
  rows: GgufRow[];
}

const f = (v: number | undefined | null, d = 1) =>
  v === undefined || v === null || !Number.isFinite(v) ? '–' : v.toFixed(d);
const mb = (b: number) => (b / MB).toFixed(2);

export const SECTION_BEGIN = '<!-- gguf-kernels:begin (npm run quant-bench -- --gguf FILE) -->';
export const SECTION_END = '<!-- gguf-kernels:end -->';

/** The doc section for a GGUF run, between markers so the rest of docs/QUANTIZATION.md is kept. */
export function renderGgufSection(rep: GgufReport): string {
  const ref = rep.rows.find((r) => r.id === 'dequant');
  const refOf = (r: GgufRow) =>
    r.ref ?? (ref ? { prefillCpuMs: ref.result.prefillCpuMs, decodeTokS: ref.result.decodeTokS } : undefined);
  const runs = new Set(rep.rows.map((r) => r.run ?? 1));
  const m = rep.machine;
  const x = (a: number, b?: number) => (b ? `×${(a / b).toFixed(2)}` : '–');
  const tps = (r: GgufRow, len: number) => (len * 1000) / r.result.prefillCpuMs[len];
  const head = [
    'configuration',
    'kernels',
    'prefill 512 tok/s',
    'prefill 2048 tok/s',
    'decode tok/s @2048',
    'vs dequant (p512 / p2048 / decode)',
    'wasm heap MB: load / after 2048',
    'shards MB',
    'mean KL vs exact',
    'max KL',
    'argmax agree',
  ];
  const lines = rep.rows.map((r) => {
    const fi = r.result.fidelity;
    return [
      `**${r.id}**${runs.size > 1 ? ` (run ${r.run ?? 1})` : ''}: ${r.what}`,
      `\`${r.kernel}\`${r.headParts > 1 ? ` (head in ${r.headParts} parts)` : ''}`,
      f(tps(r, 512), 0),
      f(tps(r, 2048), 0),
      f(r.result.decodeTokS, 2),
      (() => {
        const o = refOf(r);
        if (!o) return '–';
        const rt = (len: number) => (len * 1000) / o.prefillCpuMs[len];
        return `${x(tps(r, 512), rt(512))} / ${x(tps(r, 2048), rt(2048))} / ${x(r.result.decodeTokS, o.decodeTokS)}`;
      })(),
      `${f(r.result.heapAfterLoadMb, 0)} / ${f(r.result.heapAfter2048Mb, 0)}`,
      f(r.shardMb, 1),
      r.id === 'dequant' ? '0 (reference)' : fi ? fi.meanKl.toExponential(2) : '–',
      r.id === 'dequant' ? '–' : fi ? fi.maxKl.toExponential(2) : '–',
      fi ? `${(100 * fi.argmaxAgreement).toFixed(1)}%` : '–',
    ].join(' | ');
  });
  const bytesHead = [
    'configuration',
    'per layer MB (attention + FFN + norms)',
    `${rep.rows[0]?.nLayers ?? '?'} layers MB`,
    'embedding MB',
    'head MB',
    'all weights MB',
    'measured heap after load − runtime MB',
  ];
  const bytesLines = rep.rows.map((r) => {
    const b = r.bytes;
    const total = r.nLayers * b.perLayer + b.embed + b.head;
    return [
      r.id,
      `${mb(b.perLayer)} (${mb(b.attn)} + ${mb(b.ffn)})`,
      mb(r.nLayers * b.perLayer),
      mb(b.embed),
      mb(b.head),
      mb(total),
      f(r.result.heapAfterLoadMb - rep.runtimeHeapMb, 0),
    ].join(' | ');
  });
  const positions = rep.rows.find((r) => r.result.fidelity)?.result.fidelity?.positions ?? 0;
  return `${SECTION_BEGIN}
## ${rep.gguf.replace(/\.gguf$/i, '')} (${rep.model}): GGUF weight kernels on the real shapes

Generated by \`${rep.command}\` (commit ${rep.commit}) on ${rep.date} from \`${rep.gguf}\`.
Machine: ${m.cpus} × ${m.cpuModel}, Node ${m.node}, onnxruntime-web ${m.onnxruntimeWeb}, one wasm thread; load per core ${f(m.loadPerCoreStart, 2)} at the start,
${f(m.loadPerCoreEnd, 2)} at the end (shared machine: rates are from **on-CPU** time of the inference thread, one repetition each, under the measurement lock).

Each configuration is built by \`npm run shards -- --gguf FILE --kernel KERNELS [--head-parts N]\` and runs in its own process.
*prefill* = one dense \`runStep\` over the first 512 / 2048 tokens of \`${TIMING_TEXT}\` (the engine's query chunks);
*decode* = ${DECODE_TOKENS} greedy steps right after the 2048-token prefill, mean of the faster half.
*wasm heap* = onnxruntime's WebAssembly memory once every session exists, and after the 2048-token prefill and decode (a high-water mark: it never shrinks;
the runtime alone is ${f(rep.runtimeHeapMb, 0)} MB). *Fidelity*: teacher-forced over the first ${FIDELITY_TOKENS} tokens of ${FIDELITY_TEXTS.map((t) => `\`${t}\``).join(' and ')},
every ${FIDELITY_STRIDE}th position from the 16th (${positions} positions), full-vocabulary KL(exact ‖ configuration) and argmax agreement. The exact weights are the
\`dequant\` build's (the file's values in f32: KL 3e-8 against the numpy exact-weights reference, test/node/smollm2-reference.test.ts).
llama.cpp itself, on this file against the exact weights, has mean KL 0.0048 and 96.5% argmax agreement (NOTES.md).

${
  runs.size > 1
    ? `Rows come from ${runs.size} runs (the command above, in order; run N is the N-th). The machine's speed drifts between runs (the dequant row of each run: ${rep.rows
        .filter((r) => r.ref)
        .map((r) => `run ${r.run ?? 1} decode ${f(r.ref!.decodeTokS, 1)} tok/s`)
        .filter((v, i, a) => a.indexOf(v) === i)
        .join(
          ', ',
        )}), so compare rows through the *vs dequant* column, which divides by the dequant row of the row's own run; the dequant row shown is the latest run's.\n\n`
    : ''
}| ${head.join(' | ')} |
|${head.map(() => '---').join('|')}|
${lines.map((l) => `| ${l} |`).join('\n')}

### Bytes held per piece (what a layer split across isolates sizes its groups by)

From \`ggufWeightBytes\` (src/model/quant.ts): the tensors each kernel keeps (weights, scales, zero points, corrections), f32 norms.
The last column is the measured wasm heap after load minus the runtime's. It is a high-water mark that grows in large steps, and
it includes what loading needs only for a moment (a shard's bytes copied in while its session is created, prepacking, and for
\`dequant\` the unpack chain's f32 intermediates while ORT folds it): \`npm run memory\` measures the steady state.

| ${bytesHead.join(' | ')} |
|${bytesHead.map(() => '---').join('|')}|
${bytesLines.map((l) => `| ${l} |`).join('\n')}

${peakSection(rep)}

${ggufReasoning(rep)}

KV cache per token of context (all layers): ${rep.kvPerTokenF32} B in f32, ${rep.kvPerTokenF32 / 2} B in f16, a quarter plus a scale per row in int8 (src/engine/kv-rows.ts).
${SECTION_END}`;
}

/**
 * Prefill against the wasm MatMul peak of the same run: each configuration's dense prefill GFLOP/s (weight MatMuls,
 * causal attention and the last token's classifier, scripts/quant/peak.ts prefillFlops, over on-CPU time) as a
 * fraction of the best f32 MatMul on the layer shapes. Rows measured in a run without the peak read –.
 */
function peakSection(rep: GgufReport): string {
  const withPeak = rep.rows.filter((r) => r.peak);
  if (!withPeak.length || !rep.config) return '';
  const cfg = rep.config;
  const p = withPeak.at(-1)!.peak!;
  const shapes = p.shapes.map((s) => `${s.name} [${s.m}×${s.k}]×[${s.k}×${s.n}] ${f(s.gflops, 2)}`).join(', ');
  const lens = PREFILL_LENGTHS;
  const head = [
    'configuration',
    ...lens.map((n) => `prefill ${n}: GFLOP/s (of it weights)`),
    ...lens.map((n) => `fraction of the peak at ${n}`),
    "the run's peak GFLOP/s",
  ];
  const lines = rep.rows.map((r) => {
    const g = (n: number) => prefillFlops(cfg, n).total / (r.result.prefillCpuMs[n] * 1e6);
    const w = (n: number) => prefillFlops(cfg, n).weights / prefillFlops(cfg, n).total;
    return [
      `${r.id}${r.run ? ` (run ${r.run})` : ''}`,
      ...lens.map((n) => `${f(g(n), 2)} (${f(100 * w(n), 0)}%)`),
      ...lens.map((n) => (r.peak ? `**${f((100 * g(n)) / r.peak.peakGflops, 0)}%**` : '–')),
      r.peak ? f(r.peak.peakGflops, 2) : '–',
    ].join(' | ');
  });
  return `### Prefill against the wasm MatMul peak (same run)

The peak: one f32 MatMul graph per layer shape, the weight an initializer (prepacked by MLAS as in the \`dequant\` build), ${p.rows} rows
(the engine's prefill chunk), best on-CPU run of each, one wasm thread: ${shapes} GFLOP/s; the peak is the best shape,
${f(p.peakGflops, 2)} GFLOP/s (a layer's four MatMuls together: ${f(p.layerGflops, 2)}). A prefill's FLOPs count the layers' weight MatMuls,
causal attention (2 × 2 × dim per query and key) and the last token's classifier (scripts/quant/peak.ts \`prefillFlops\`), over the prefill's on-CPU time.

| ${head.join(' | ')} |
|${head.map(() => '---').join('|')}|
${lines.map((l) => `| ${l} |`).join('\n')}`;
}

/** The paragraphs that read the GGUF rows; they quote this run's numbers (a row missing from the run reads as –). */
function ggufReasoning(rep: GgufReport): string {
  const r = (id: string) => rep.rows.find((x) => x.id === id);
  const ref = r('dequant');
  const kl = (id: string) => (r(id)?.result.fidelity ? r(id)!.result.fidelity!.meanKl.toExponential(1) : '–');
  const dec = (id: string) => f(r(id)?.result.decodeTokS, 1);
  const p2k = (id: string) => (r(id) ? f((2048 * 1000) / r(id)!.result.prefillCpuMs[2048], 0) : '–');
  const layer = (id: string) => (r(id) ? mb(r(id)!.bytes.perLayer) : '–');
  const xp = (id: string) => {
    const row = r(id);
    const o = row?.ref ?? ref?.result;
    return row && o ? `×${(o.prefillCpuMs[2048] / row.result.prefillCpuMs[2048]).toFixed(2)}` : '–';
  };
  const xd = (id: string) => {
    const row = r(id);
    const o = row?.ref ?? ref?.result;
    return row && o ? `×${(row.result.decodeTokS / o.decodeTokS).toFixed(2)}` : '–';
  };
  return `### Reading the SmolLM2 numbers

- **Exactness.** MatMulNBits computes Q4_1 exactly both ways: with zero point 0 and the block minimum as a correction m·Σx (mean KL ${kl('nbits')})
  and with a float zero point −m/d (${kl('nbits-zp')}): onnxruntime-web ${rep.machine.onnxruntimeWeb} accepts float zero points for 4 bits (not for 8 bits, which
  the Q8_0 head does not need: q + 128 with the default zero point is exact). Both hold ${layer('nbits-zp')} MB a layer instead of ${layer('dequant')} MB.
- **But MatMulNBits decodes every weight on every run** (there is no 4-bit wasm GEMM): fine in a long prefill (${p2k('nbits-zp')} tok/s at 2048, ${xp('nbits-zp')}
  of f32 in the same run), ruinous in decode, where each token re-dequantizes all 30 layers and the head: ${dec('nbits-zp')} tok/s (float zero point, ${xd('nbits-zp')} of f32)
  and ${dec('nbits')} tok/s (correction, ${xd('nbits')}). Any group kept in 4 bits pays this in decode (attention only: ${xd('attn4-ffn8')}; FFN only: ${xd('attn8-ffn4')}).
- **int8 per channel with one int8 activation term (\`integer\`) is fast and wrong for SmolLM2**: decode ${xd('integer')} of f32 and the fastest prefill
  (${xp('integer')} at 2048), but mean KL ${kl('integer')}: activation rows with outlier channels lose everything else when rounded to 8 bits (one matrix at a
  time on 16 positions, wq|wk|wv and w2 cost the most), while re-quantizing the Q4_1 weights to int8 per channel, folded to f32, costs about a tenth of it.
- **\`integer2\`** keeps the weights int8 (asymmetric per channel) and writes each activation row as two int8 terms (the second quantizes the first's error):
  two MatMulIntegers on the same int8 weights. Layers and head in integer2: mean KL ${kl('integer2-all')} (llama.cpp on this file: 0.0048), ${dec('integer2-all')} tok/s decode
  (${xd('integer2-all')} of f32 in the same run), ${p2k('integer2-all')} tok/s prefill at 2048, ${layer('integer2-all')} MB a layer. The head matters: an int8 head with one term costs
  mean KL ${kl('integer2')} on its own, the exact 8-bit MatMulNBits head ${kl('integer2-head8')} but decode ${dec('integer2-head8')} tok/s (it dequantizes 28 M weights a token),
  a 4-bit head ${kl('integer2-head4')}, and a 4-bit embedding with the int8 head ${kl('integer2-emb4')} (${kl('integer2')} without it): keep both at 8 bits.
- **Nothing that keeps the weights quantized reaches 20 tok/s of decode** on one wasm thread here; f32 does in a quiet run (best dequant decode of the runs:
  ${f(Math.max(ref?.result.decodeTokS ?? 0, ...rep.rows.map((x) => x.ref?.decodeTokS ?? 0)), 1)} tok/s) at ${mb(ref?.bytes.perLayer ?? NaN)} MB a layer
  and ${mb(ref ? ref.nLayers * ref.bytes.perLayer + ref.bytes.embed + ref.bytes.head : NaN)} MB of weights.`;
}

/** Replaces (or appends) the GGUF section of a doc. */
export function spliceSection(doc: string, section: string): string {
  const a = doc.indexOf(SECTION_BEGIN);
  const b = doc.indexOf(SECTION_END);
  if (a >= 0 && b > a) return `${doc.slice(0, a)}${section}${doc.slice(b + SECTION_END.length)}`;
  return `${doc.trimEnd()}\n\n${section}\n`;
}

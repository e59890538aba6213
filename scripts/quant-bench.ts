/**
 * npm run quant-bench -- [--quick] [--json] [--out docs/QUANTIZATION.md] [--models stories260K,random-768]
 *
 * Compares compute strategies for quantized weights on onnxruntime-web wasm, one thread:
 *   f32     MatMul on f32 initializers (the baseline)
 *   (a)     dequantize once at load: int8/int4 initializers on disk, folded into f32 initializers when
 *           the session is created (kernel `dequant`, session.disable_quant_qdq for DequantizeLinear)
 *   (b)     DequantizeLinear + MatMul on every run (the same int8 shards, folding left off)
 *   (c)     com.microsoft MatMulNBits, 4-bit (kernel `nbits`)
 *   (d)     DynamicQuantizeLinear + MatMulInteger, int8 (kernel `integer`)
 * For each: prefill time to first token at 512 and 2048 tokens, decode tokens/s, wasm heap and RSS,
 * shard bytes, and perplexity on the dev text against f32 (stories260K only: the dim-768 12-layer
 * shape has seeded random weights, so it is measured for speed and memory only).
 *
 * Each (model, strategy) runs in its own process (the wasm heap never shrinks, so memory figures are
 * per process), one after the other. Times are on-CPU milliseconds of the single inference thread
 * (wall time is in --json): the machine may be shared. Progress goes to stderr; --json prints one
 * JSON object on stdout. Writes the tables and the reasoning to docs/QUANTIZATION.md.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { SequenceState } from '../src/engine/caches.js';
import { defaultQuant, DEFAULT_MEMORY_BUDGET_BYTES, estimateMemory, INTEGER_KERNEL_MIN_DIM, MB, RUNTIME_OVERHEAD_BYTES } from '../src/engine/memory-budget.js';
import { loadModel, type LoadedModel } from '../src/engine/model.js';
import { runStep } from '../src/engine/step.js';
import { parseLlama2cCheckpoint, type RandomCheckpointOptions } from '../src/model/checkpoint.js';
import { llama2cConfig, type ModelConfig, type ModelShape } from '../src/model/config.js';
import { quantLabel, type QuantSpec } from '../src/model/quant.js';
import { LAYER_IO, HEAD_IO } from '../src/model/shard-io.js';
import { embedTokens } from '../src/engine/vocab-parts.js';
import { Tokenizer } from '../src/model/tokenizer.js';
import { createGraphSession } from '../src/runtime/onnx-runtime.js';
import { GraphBuilder } from '../src/shards/onnx-builder.js';
import { loadPerCore, median, threadCpuMs } from './lib/bench-clock.js';
import { DEFAULT_DATA, DEFAULT_MODEL_DIR, fail, initNodeRuntime, readBytes, REPO_ROOT, runMain } from './lib/node-env.js';
import { promptWindows, storyStream } from './lib/prompts.js';
import type { ShardSource } from '../src/shards/build-shards.js';
import { buildAndWrite, sourceFromCheckpoint, sourceFromRandom, upToDate } from './lib/shard-tasks.js';

// ---------------------------------------------------------------------------------------------
// What is measured

interface Strategy {
  id: string;
  /** the strategy letter of the brief: a, b, c, d; '' for the f32 baseline */
  letter: string;
  quant: QuantSpec;
  /** fold DequantizeLinear at session creation (only matters for int8/dequant) */
  fold: boolean;
  what: string;
  /** only on the small model, in full mode: block-size variants for the perplexity cost */
  extra?: boolean;
}

const F32: QuantSpec = { format: 'f32', kernel: 'matmul' };
const INT8_DQ: QuantSpec = { format: 'int8', kernel: 'dequant' };
const int4 = (blockSize: number, kernel: 'dequant' | 'nbits'): QuantSpec => ({ format: 'int4', kernel, blockSize });

const STRATEGIES: Strategy[] = [
  { id: 'f32', letter: '', quant: F32, fold: true, what: 'f32 MatMul' },
  { id: 'int8-fold', letter: 'a', quant: INT8_DQ, fold: true, what: 'int8 on disk, DequantizeLinear folded at load' },
  { id: 'int8-dq-every-run', letter: 'b', quant: INT8_DQ, fold: false, what: 'int8, DequantizeLinear + MatMul every run' },
  { id: 'int8-integer', letter: 'd', quant: { format: 'int8', kernel: 'integer' }, fold: true, what: 'int8, DynamicQuantizeLinear + MatMulInteger' },
  { id: 'int4-fold', letter: 'a', quant: int4(32, 'dequant'), fold: true, what: 'int4 (block 32) on disk, unpacked and folded at load' },
  { id: 'int4-nbits', letter: 'c', quant: int4(32, 'nbits'), fold: true, what: 'int4 (block 32), MatMulNBits every run' },
  { id: 'int4-b16-fold', letter: 'a', quant: int4(16, 'dequant'), fold: true, what: 'int4 (block 16), folded at load', extra: true },
  { id: 'int4-b64-fold', letter: 'a', quant: int4(64, 'dequant'), fold: true, what: 'int4 (block 64), folded at load', extra: true },
];

interface BenchModel {
  id: string;
  synthetic: boolean;
  /** seeded random weights of this shape (speed and memory only) */
  random?: RandomCheckpointOptions;
  describe: string;
  config: () => ModelConfig;
  /** perplexity on the dev text (real weights only) */
  perplexity: boolean;
  lengths: number[];
  reps: (len: number, quick: boolean) => number;
  decode: (quick: boolean) => number;
  warmup: (quick: boolean) => number[];
}

const RANDOM_768: RandomCheckpointOptions = { dim: 768, hiddenDim: 2048, nLayers: 12, nHeads: 12, nKvHeads: 12, vocabSize: 512, seqLen: 2048, seed: 1 };
/** stories15M's body (dim 288, 6 layers), to see where between the two the kernels start to differ */
const RANDOM_288: RandomCheckpointOptions = { dim: 288, hiddenDim: 768, nLayers: 6, nHeads: 6, nKvHeads: 6, vocabSize: 512, seqLen: 2048, seed: 1 };

const MODELS: BenchModel[] = [
  {
    id: 'stories260K',
    synthetic: false,
    describe: 'The real pretrained model (dim 64, 5 layers, 8 heads / 4 KV heads, hidden 172, vocab 512, trained context 512; 2048 tokens is past its context, measured for speed only).',
    config: () => parseLlama2cCheckpoint(readBytes(join(DEFAULT_MODEL_DIR, 'stories260K.bin')), 'stories260K.bin').config,
    perplexity: true,
    lengths: [512, 2048],
    reps: (_len, quick) => (quick ? 3 : 7),
    decode: (quick) => (quick ? 32 : 128),
    warmup: () => [512, 2048],
  },
  {
    id: 'random-288',
    synthetic: true,
    describe: "dim 288, 6 layers, 6 heads, hidden 768, vocab 512, context 2048: stories15M's body with a small vocabulary.",
    random: RANDOM_288,
    config: () => llama2cConfig(RANDOM_288),
    perplexity: false,
    lengths: [512, 2048],
    reps: (_len, quick) => (quick ? 2 : 5),
    decode: (quick) => (quick ? 32 : 64),
    warmup: () => [512, 2048],
  },
  {
    id: 'random-768',
    synthetic: true,
    describe: "dim 768, 12 layers, 12 heads, hidden 2048, vocab 512, context 2048: stories110M's body with a small vocabulary.",
    random: RANDOM_768,
    config: () => llama2cConfig(RANDOM_768),
    perplexity: false,
    lengths: [512, 2048],
    reps: (len, quick) => (quick ? 1 : len > 512 ? 2 : 3),
    decode: (quick) => (quick ? 8 : 16),
    warmup: (quick) => (quick ? [] : [512]),
  },
];

/** The token used to measure decode: prefill this many tokens first. */
const DECODE_CONTEXT = 512;
const PPL_WINDOW = 512;

// ---------------------------------------------------------------------------------------------
// Child process: one model in one strategy

interface ChildJob {
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

interface Timing {
  cpuMs: number;
  wallMs: number;
}

interface ChildResult {
  loadMs: Timing;
  heapAfterLoadMb: number;
  rssAfterLoadMb: number;
  prefill: Record<string, { cpuMs: number[]; wallMs: number[] }>;
  /** decode in chunks: the best chunk's rate is the figure (noise only ever slows a chunk down) */
  decode: { tokens: number; cpuMs: number; wallMs: number; chunks: { tokens: number; cpuMs: number; wallMs: number }[] };
  /** wasm heap after the prefills at DECODE_CONTEXT tokens and the decode */
  heapAfterContextMb: number;
  heapPeakMb: number;
  peakRssMb: number;
  nll: { sum: number; count: number } | null;
}

// The wasm heap is a WebAssembly.Memory that onnxruntime's glue creates in JS: record it so its size
// can be read. (Its pages are never returned: the size is the high-water mark.)
const memories: WebAssembly.Memory[] = [];
function watchWasmMemory(): void {
  const Original = WebAssembly.Memory;
  WebAssembly.Memory = new Proxy(Original, {
    construct(target, args) {
      const m = Reflect.construct(target, args) as WebAssembly.Memory;
      memories.push(m);
      return m;
    },
  });
}
const heapMb = () => Math.max(0, ...memories.map((m) => m.buffer.byteLength)) / MB;
const rssMb = () => process.memoryUsage().rss / MB;

async function timed<T>(f: () => Promise<T>): Promise<[T, Timing]> {
  const c = threadCpuMs();
  const w = performance.now();
  const r = await f();
  return [r, { cpuMs: threadCpuMs() - c, wallMs: performance.now() - w }];
}

function argmax(a: Float32Array): number {
  let b = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i;
  return b;
}

/** Logits [n, vocab] for every position of `ids` in one dense pass through the model's own sessions. */
async function allLogits(model: LoadedModel, ids: number[]): Promise<Float32Array> {
  const { dim, kvDim } = model.config;
  const n = ids.length;
  let x = await embedTokens(model.embed, ids, dim);
  const pos = Float32Array.from(ids, (_, i) => i);
  for (const layer of model.layers) {
    const out = await layer.run({
      [LAYER_IO.inputs.x]: { data: x, dims: [n, dim] },
      [LAYER_IO.inputs.pos]: { data: pos, dims: [n] },
      [LAYER_IO.inputs.pastK]: { data: new Float32Array(0), dims: [0, kvDim] },
      [LAYER_IO.inputs.pastV]: { data: new Float32Array(0), dims: [0, kvDim] },
      [LAYER_IO.inputs.pastPos]: { data: new Float32Array(0), dims: [0] },
    });
    x = out[LAYER_IO.outputs.y].data as Float32Array;
  }
  // One head run over all n rows (quant-bench models have one head part).
  return (await model.head[0].session.run({ [HEAD_IO.inputs.x]: { data: x, dims: [n, dim] } }))[HEAD_IO.outputs.logits].data as Float32Array;
}

function windowNll(logits: Float32Array, ids: number[], vocab: number): number {
  let nll = 0;
  for (let i = 0; i + 1 < ids.length; i++) {
    const row = logits.subarray(i * vocab, (i + 1) * vocab);
    let max = -Infinity;
    for (const v of row) max = Math.max(max, v);
    let s = 0;
    for (const v of row) s += Math.exp(v - max);
    nll -= row[ids[i + 1]] - max - Math.log(s);
  }
  return nll;
}

async function runChild(job: ChildJob): Promise<ChildResult | { heapMb: number; rssMb: number }> {
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
    loadModel(manifest, async (f) => readBytes(join(job.dir, f)), { memoryBudgetBytes: Infinity, foldDequantize: job.fold }),
  );
  const heapAfterLoadMb = heapMb();
  const rssAfterLoadMb = rssMb();
  log(`loaded in ${loadMs.wallMs.toFixed(0)} ms; wasm heap ${heapAfterLoadMb.toFixed(1)} MB`);

  // Warm-up: first runs allocate, prepack and grow the heap.
  for (const len of job.warmup) {
    const warm = new SequenceState(model.config);
    await runStep(model, warm, job.prompts[String(len)], { schedule: null });
    await runStep(model, warm, [5], { schedule: null });
    log(`warm-up ${len} done`);
  }

  const prefill: ChildResult['prefill'] = {};
  const decode: ChildResult['decode'] = { tokens: 0, cpuMs: 0, wallMs: 0, chunks: [] };
  let heapAfterContextMb = NaN;
  for (const len of job.lengths) {
    const prompt = job.prompts[String(len)];
    const p = (prefill[String(len)] = { cpuMs: [] as number[], wallMs: [] as number[] });
    for (let r = 0; r < job.reps[String(len)]; r++) {
      const seq = new SequenceState(model.config);
      const [step, t] = await timed(() => runStep(model, seq, prompt, { schedule: null }));
      p.cpuMs.push(t.cpuMs);
      p.wallMs.push(t.wallMs);
      log(`prefill ${len}: ${t.cpuMs.toFixed(0)} ms CPU (${t.wallMs.toFixed(0)} ms wall)`);
      if (len === DECODE_CONTEXT && r === 0) {
        let logits = step.logits;
        const chunk = Math.max(1, Math.floor(job.decode / 4));
        for (let done = 0; done < job.decode; done += chunk) {
          const n = Math.min(chunk, job.decode - done);
          const [, d] = await timed(async () => {
            for (let k = 0; k < n; k++) logits = (await runStep(model, seq, [argmax(logits)], { schedule: null })).logits;
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

// ---------------------------------------------------------------------------------------------
// Parent: build shards, run children, write the report

const CACHE = join(REPO_ROOT, '.bench-cache', 'quant');
const t0 = Date.now();
const progress = (m: string) => process.stderr.write(`[quant-bench ${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${m}\n`);

function spawnChild(job: ChildJob, tag: string): Promise<unknown> {
  mkdirSync(CACHE, { recursive: true });
  const file = join(CACHE, `job-${tag}.json`);
  writeFileSync(file, JSON.stringify(job));
  return new Promise((resolve, reject) => {
    // --no-liftoff: V8 compiles onnxruntime's wasm with its optimizing tier up front. Otherwise the first
    // runs execute baseline code while tier-up competes for the (shared) cores, and every figure
    // would depend on how long the process had been running; a warm isolate runs optimized code.
    const child = spawn(process.execPath, ['--no-liftoff', '--import', 'tsx', join(REPO_ROOT, 'scripts/quant-bench.ts'), '--child', file], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let partial = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => {
      partial += d;
      const lines = partial.split('\n');
      partial = lines.pop()!;
      for (const l of lines) if (l.trim()) progress(`${tag}: ${l.trim()}`);
    });
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`${tag} exited with code ${code}`));
      try {
        resolve(JSON.parse(out.trim().split('\n').pop()!));
      } catch (e) {
        reject(new Error(`${tag} printed no result: ${(e as Error).message}`));
      }
    });
  });
}

interface Row {
  model: string;
  strategy: string;
  letter: string;
  quant: string;
  what: string;
  shardMb: number;
  estimateMb: number;
  fitsBudget: boolean;
  loadMs: number;
  heapAfterLoadMb: number;
  heapAfterContextMb: number;
  heapPeakMb: number;
  peakRssMb: number;
  /** best (lowest) on-CPU prefill time of the repetitions */
  ttftMs: Record<string, number>;
  ttftMedianMs: Record<string, number>;
  ttftWallMs: Record<string, number>;
  decodeTokS: number;
  decodeWallTokS: number;
  ppl: number | null;
  pplChange: number | null;
}

async function shardsFor(model: BenchModel, q: QuantSpec, log: (l: string) => void): Promise<string> {
  const dir = join(CACHE, model.id, quantLabel(q).replace(/\//g, '-'));
  const tokenizer = join(DEFAULT_MODEL_DIR, 'tok512.bin');
  if (!model.synthetic) {
    const source = await sourceFromCheckpoint({ checkpoint: join(DEFAULT_MODEL_DIR, 'stories260K.bin'), tokenizer, name: model.id });
    if (!upToDate(dir, source, q)) await buildAndWrite(dir, { ...source, quant: q });
    return dir;
  }
  // Seeded random weights are only generated when a format is missing: the manifest's source names the options and seed.
  const opts = model.random!;
  const stub = { source: { file: `random(${JSON.stringify(opts)})`, seed: opts.seed } } as ShardSource;
  if (upToDate(dir, stub, q)) return dir;
  log(`building ${model.id} ${quantLabel(q)} shards (seeded random weights)`);
  await buildAndWrite(dir, { ...sourceFromRandom(model.id, opts, tokenizer), quant: q });
  return dir;
}

function shardBytes(dir: string): number {
  const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  return [...m.files.embed, ...m.files.layers, ...m.files.head].reduce((s: number, f: { bytes: number }) => s + f.bytes, 0);
}

const fmt = (v: number | null | undefined, d = 1) => (v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(d));
const pct = (v: number | null) => (v === null ? '–' : `${v >= 0 ? '+' : ''}${(v * 100).toFixed(2)}%`);

// Known llama2.c shapes, for the which-size-fits table.
const SHAPES: { name: string; cfg: ModelConfig }[] = [
  ['stories260K', 64, 172, 5, 8, 4, 512, 512],
  ['stories15M', 288, 768, 6, 6, 6, 32000, 256],
  ['stories42M', 512, 1376, 8, 8, 8, 32000, 1024],
  ['stories110M', 768, 2048, 12, 12, 12, 32000, 1024],
  ['random-768 (this bench)', 768, 2048, 12, 12, 12, 512, 2048],
].map(([name, dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen]) => ({
  name: name as string,
  cfg: llama2cConfig({ dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen } as ModelShape),
}));
const FIT_FORMATS: QuantSpec[] = [F32, INT8_DQ, { format: 'int8', kernel: 'integer' }, int4(32, 'dequant'), int4(32, 'nbits')];

function fitsTable(): string {
  const head = `| model (context) | ${FIT_FORMATS.map(quantLabel).join(' | ')} | default |\n|---|${FIT_FORMATS.map(() => '---').join('|')}|---|\n`;
  return (
    head +
    SHAPES.map(({ name, cfg }) => {
      const cells = FIT_FORMATS.map((q) => {
        const e = estimateMemory(cfg, q);
        return `${e.total <= DEFAULT_MEMORY_BUDGET_BYTES ? '✓' : '✗'} ${(e.total / MB).toFixed(0)} MB`;
      });
      const d = defaultQuant(cfg);
      const fits = estimateMemory(cfg, d).total <= DEFAULT_MEMORY_BUDGET_BYTES;
      return `| ${name} (${cfg.seqLen}) | ${cells.join(' | ')} | ${fits ? quantLabel(d) : 'none fits'} |`;
    }).join('\n')
  );
}

function table(rows: Row[], withPpl: boolean, lengths: number[]): string {
  const cols = [
    'strategy',
    'format/kernel',
    'shards MB',
    'load ms',
    `wasm heap MB: load / ${DECODE_CONTEXT} / ${lengths.at(-1)}`,
    'estimate MB',
    ...lengths.map((l) => `TTFT ${l} ms`),
    'decode tok/s',
    'peak RSS MB',
    ...(withPpl ? ['perplexity', 'vs f32'] : []),
  ];
  const lines = rows.map((r) =>
    [
      `${r.letter ? `(${r.letter}) ` : ''}${r.what}`,
      r.quant,
      fmt(r.shardMb, 2),
      fmt(r.loadMs, 0),
      `${fmt(r.heapAfterLoadMb, 0)} / ${fmt(r.heapAfterContextMb, 0)} / ${fmt(r.heapPeakMb, 0)}`,
      fmt(r.estimateMb, 0),
      ...lengths.map((l) => fmt(r.ttftMs[l], 0)),
      fmt(r.decodeTokS, 1),
      fmt(r.peakRssMb, 0),
      ...(withPpl ? [fmt(r.ppl, 4), pct(r.pplChange)] : []),
    ].join(' | '),
  );
  return `| ${cols.join(' | ')} |\n|${cols.map(() => '---').join('|')}|\n${lines.map((l) => `| ${l} |`).join('\n')}`;
}

interface Report {
  command: string;
  quick: boolean;
  date: string;
  machine: { cpus: number; cpuModel: string; node: string; onnxruntimeWeb: string; loadPerCoreStart: number; loadPerCoreEnd: number };
  /** the commit measured, "+dirty" when the working tree had changes */
  commit: string;
  runtimeBaseline: { heapMb: number; rssMb: number };
  rows: Row[];
}

function find(rows: Row[], model: string, id: string): Row | undefined {
  return rows.find((r) => r.model === model && r.strategy === id);
}

function renderDoc(rep: Report, models: BenchModel[]): string {
  const s = (id: string) => find(rep.rows, 'stories260K', id);
  const r7 = (id: string) => find(rep.rows, 'random-768', id);
  const ratio = (a?: number, b?: number) => (a && b ? (a / b).toFixed(2) : '–');
  const f32s = s('f32');
  const f32r = r7('f32');
  const fold = r7('int8-fold') ?? s('int8-fold');
  const perRun = r7('int8-dq-every-run') ?? s('int8-dq-every-run');
  const base = f32r ?? f32s;
  const m = rep.machine;
  const sections: string[] = [];
  sections.push(`# Quantized weights on onnxruntime-web (wasm, one thread)

Generated by \`${rep.command}\` (scripts/quant-bench.ts, commit ${rep.commit})${rep.quick ? ' in **--quick** mode (fewer repetitions: treat small differences as noise)' : ''} on ${rep.date}.
Machine: ${m.cpus} × ${m.cpuModel}, Node ${m.node}, onnxruntime-web ${m.onnxruntimeWeb}; load per core ${fmt(m.loadPerCoreStart, 2)} at the start, ${fmt(m.loadPerCoreEnd, 2)} at the end
(the machine is shared, so times are **on-CPU** milliseconds of the single inference thread; \`--json\` also has wall times).

Every row is a separate process. TTFT = one dense prefill step (\`runStep\`, no pruning: this measures the kernels,
and LazyLLM's savings multiply whatever they give) from prompt ids to the last token's logits, the best of the repetitions
after a warm-up (noise on a shared machine only ever adds time). Decode = greedy tokens after a ${DECODE_CONTEXT}-token prompt, timed in
four chunks, best chunk. *wasm heap* is onnxruntime's WebAssembly memory (it never shrinks: a high-water mark) once every session
exists (weights as held for running, plus the runtime's ${fmt(rep.runtimeBaseline.heapMb, 0)} MB baseline), after the ${DECODE_CONTEXT}-token prefills
and decode, and after the longest prefill (what activations add). *peak RSS* includes Node's own ~${fmt(rep.runtimeBaseline.rssMb, 0)} MB.
*estimate* is \`estimateMemory\` (src/engine/memory-budget.ts): weights as held + KV and Aux caches at full context + ${RUNTIME_OVERHEAD_BYTES / MB} MB runtime.
Perplexity: ${PPL_WINDOW}-token windows of \`../shared/data/tinystories-dev.txt\` (BOS first, every next token scored).

Strategies: **(a)** dequantize once at load — int8/int4 initializers on disk and on the wire, turned into f32 initializers
when the session is created (int8: \`DequantizeLinear\` on the initializer with \`session.disable_quant_qdq=1\`, which lets ORT's
constant folding evaluate it; int4: a nibble-unpack chain of plain ops on initializers, which ORT always folds);
**(b)** the same int8 graph without that option: ORT keeps \`DequantizeLinear\` (for its QDQ fusions) and dequantizes the whole
matrix on every run; **(c)** \`com.microsoft.MatMulNBits\`, 4 bits, weights stay packed; **(d)** \`DynamicQuantizeLinear\` on the
activations + \`MatMulInteger\` + rescale (ORT fuses it into \`DynamicQuantizeMatMul\`), weights stay int8.
Formats: int8 = per-output-channel symmetric (scale = max|row|/127); int4 = symmetric per block of 32 inputs (scale = max|block|/7,
stored as MatMulNBits' packed nibbles, so (a) and (c) read the same bytes). Quantized formats also store the embedding table as int8 rows.`);

  for (const model of models) {
    const rows = rep.rows.filter((r) => r.model === model.id);
    if (!rows.length) continue;
    sections.push(
      `## ${model.id}${model.synthetic ? ' — seeded random weights (speed and memory only)' : ''}\n\n` +
        `${model.describe}${model.synthetic ? ' The weights are seeded random numbers: speed and memory depend only on shapes, so only those are reported.' : ''}\n\n` +
        table(rows, model.perplexity, model.lengths),
    );
  }

  const foldEvidence =
    fold && perRun && base
      ? `On ${fold.model}, decode runs at ${fmt(fold.decodeTokS)} tok/s with folding against ${fmt(base.decodeTokS)} for f32 (×${ratio(fold.decodeTokS, base.decodeTokS)}) and ${fmt(perRun.decodeTokS)} without it (×${ratio(perRun.decodeTokS, base.decodeTokS)}); the wasm heap after load is ${fmt(fold.heapAfterLoadMb, 0)} MB folded, ${fmt(base.heapAfterLoadMb, 0)} MB for f32 and ${fmt(perRun.heapAfterLoadMb, 0)} MB unfolded. Folded int8 holds f32 weights and runs at f32 speed, i.e. the fold really happens at session creation (and costs ${fmt(fold.loadMs, 0)} ms of load against ${fmt(base.loadMs, 0)} ms).`
      : 'Run without --models restrictions to get the folding evidence.';

  sections.push(`## Does (a) really fold?

${foldEvidence}

## Relative to f32

Each strategy's figures divided by the same model's f32 row (below 1 is better, except perplexity, a change).

${ratioTable(rep, models)}

## Reading the numbers

${reasoning(rep)}

## Which sizes fit a 128 MB isolate

\`estimateMemory\` for llama2.c's published shapes (vocab 32000) at their full context: weights as the kernel holds them,
f32 KV cache and Aux Cache for every position, ${RUNTIME_OVERHEAD_BYTES / MB} MB runtime. \`loadModel\` refuses a model above the budget
(\`EngineError\` code \`model_too_large\`, naming each part; \`LAZY_EDGE_MEMORY_BUDGET_MB\` or \`memoryBudgetBytes\` changes it). Not counted:
activations. The engine prefills in chunks of query rows, so one layer's attention scores stay near heads × chunk × n × 4 bytes;
the heap the tables report after the ${DECODE_CONTEXT}- and 2048-token prefills shows what they add on top of the weights. The KV cache is
what keeps the bigger shapes out: f32, every layer, every position (144 MB for 12 × 768 at 2048 tokens), whatever the weight format.

${fitsTable()}

## The default, per model size

\`npm run shards\` without \`--quant\` (and so \`npm start\` / \`npm test\`, through \`ensureDefaultShards\`) builds \`defaultQuant(config)\`
(src/engine/memory-budget.ts), the first of these whose estimate fits the budget:

1. **int8/dequant** (strategy a) when dim < ${INTEGER_KERNEL_MIN_DIM}: stories260K's default. Same speed as f32, perplexity ${pct(find(rep.rows, 'stories260K', 'int8-fold')?.pplChange ?? null)}, shards ×${fmt((find(rep.rows, 'stories260K', 'int8-fold')?.shardMb ?? NaN) / (find(rep.rows, 'stories260K', 'f32')?.shardMb ?? NaN), 2)}.
2. **int8/integer** (strategy d): larger models. Faster prefill, a quarter of the weight memory, perplexity ${pct(find(rep.rows, 'stories260K', 'int8-integer')?.pplChange ?? null)} on stories260K
   (re-measure it for a real larger checkpoint: per-tensor activation quantization degrades with activation outliers, which grow with model size).
3. **int4-b32/nbits** (strategy c) when neither int8 fits: perplexity ${pct(find(rep.rows, 'stories260K', 'int4-nbits')?.pplChange ?? null)} on stories260K and a slow decode.

\`--quant f32|int8|int4 [--block-size 32] [--kernel dequant|integer|nbits]\` overrides it; the manifest records format, kernel and block size,
and \`--if-missing\` rebuilds when they differ from what is asked.
`);
  return `${sections.join('\n\n')}\n`;
}

/** Ratios to the same model's f32 row: the table the choice is made from. */
function ratioTable(rep: Report, models: BenchModel[]): string {
  const cols = ['model', 'strategy', 'TTFT 512', 'TTFT 2048', 'decode time / token', 'wasm heap after load', 'shard bytes', 'perplexity'];
  const lines: string[] = [];
  for (const m of models) {
    const f = find(rep.rows, m.id, 'f32');
    if (!f) continue;
    for (const r of rep.rows.filter((x) => x.model === m.id && x.strategy !== 'f32' && !x.strategy.includes('-b'))) {
      const x = (a: number, b: number) => `×${(a / b).toFixed(2)}`;
      lines.push(
        `| ${m.id} | ${r.letter ? `(${r.letter}) ` : ''}${r.quant} | ${x(r.ttftMs[512], f.ttftMs[512])} | ${x(r.ttftMs[2048], f.ttftMs[2048])} | ` +
          `${x(f.decodeTokS, r.decodeTokS)} | ${x(r.heapAfterLoadMb, f.heapAfterLoadMb)} | ${x(r.shardMb, f.shardMb)} | ${m.perplexity ? pct(r.pplChange) : 'n/a (random weights)'} |`,
      );
    }
  }
  return `| ${cols.join(' | ')} |\n|${cols.map(() => '---').join('|')}|\n${lines.join('\n')}`;
}

/** The paragraphs that interpret the measured rows; kept here so they quote this run's numbers. */
function reasoning(rep: Report): string {
  const at = (model: string, id: string) => find(rep.rows, model, id);
  const x = (a?: number, b?: number) => (a && b ? `×${(a / b).toFixed(2)}` : '–');
  const out: string[] = [];
  const s = (id: string) => at('stories260K', id);
  if (s('f32') && s('int8-fold')) {
    const ttfts = rep.rows.filter((r) => r.model === 'stories260K' && !r.strategy.includes('-b')).map((r) => r.ttftMs[512]);
    out.push(
      `- **Quality (stories260K, the only real weights).** int8 per channel moves perplexity by ${pct(s('int8-fold')!.pplChange)}: within the +1% bar, ` +
        `i.e. free. The integer kernel also rounds every activation row to uint8 (per tensor) and costs ${pct(s('int8-integer')?.pplChange ?? null)}, still within the bar. ` +
        `int4 costs ${pct(s('int4-fold')?.pplChange ?? null)} with blocks of 32` +
        (s('int4-b16-fold') && s('int4-b64-fold') ? ` (${pct(s('int4-b16-fold')!.pplChange)} with 16, ${pct(s('int4-b64-fold')!.pplChange)} with 64)` : '') +
        ': a 64-wide model has no redundancy to absorb 4-bit rounding. (a) and (c) read the same int4 bytes and give the same perplexity; so do (a) and (b) for int8.',
    );
    out.push(
      `- **Speed at dim 64.** Every strategy prefills 512 tokens in ${fmt(Math.min(...ttfts), 0)}–${fmt(Math.max(...ttfts), 0)} ms and decodes within the run's noise of f32: ` +
        'the matrices are 64 wide, so attention, norms and per-run overhead cost more than the weight GEMMs, and no kernel choice shows.',
    );
  }
  for (const model of ['random-288', 'random-768']) {
    const f = at(model, 'f32');
    if (!f) continue;
    const a = at(model, 'int8-fold');
    const b = at(model, 'int8-dq-every-run');
    const c = at(model, 'int4-nbits');
    const d = at(model, 'int8-integer');
    out.push(
      `- **Speed at ${model} (f32: TTFT 512 ${fmt(f.ttftMs[512], 0)} ms, 2048 ${fmt(f.ttftMs[2048], 0)} ms, decode ${fmt(f.decodeTokS)} tok/s).** ` +
        `(a) runs at f32 speed (TTFT ${x(a?.ttftMs[512], f.ttftMs[512])} / ${x(a?.ttftMs[2048], f.ttftMs[2048])}, decode time ${x(f.decodeTokS, a?.decodeTokS)}). ` +
        `(b) and (c) dequantize every matrix on every run: hidden in a long prefill (TTFT 2048 ${x(b?.ttftMs[2048], f.ttftMs[2048])} and ${x(c?.ttftMs[2048], f.ttftMs[2048])}) ` +
        `but it dominates a decode step: ${x(f.decodeTokS, b?.decodeTokS)} and ${x(f.decodeTokS, c?.decodeTokS)} the time per token. ` +
        `(d) prefills faster than f32 (TTFT ${x(d?.ttftMs[512], f.ttftMs[512])} at 512, ${x(d?.ttftMs[2048], f.ttftMs[2048])} at 2048, where f32 attention takes a larger share) ` +
        `and decodes in ${x(f.decodeTokS, d?.decodeTokS)} the time per token.`,
    );
  }
  const f = at('random-768', 'f32');
  if (f) {
    const a = at('random-768', 'int8-fold');
    const a4 = at('random-768', 'int4-fold');
    const c = at('random-768', 'int4-nbits');
    const d = at('random-768', 'int8-integer');
    out.push(
      `- **Memory (random-768).** (a) saves bytes on the wire and on disk (${fmt(a?.shardMb, 0)} MB of shards instead of ${fmt(f.shardMb, 0)}) but not in the isolate: ` +
        `the heap after load is ${fmt(a?.heapAfterLoadMb, 0)} MB against f32's ${fmt(f.heapAfterLoadMb, 0)} MB. int4 folded at load is worse than f32 there ` +
        `(${fmt(a4?.heapAfterLoadMb, 0)} MB: the unpack chain's f32 intermediates exist while ORT folds it). Only the kernels that keep weights quantized shrink the heap: ` +
        `(d) ${fmt(d?.heapAfterLoadMb, 0)} MB, (c) ${fmt(c?.heapAfterLoadMb, 0)} MB.`,
    );
  }
  const dDecode = ['random-288', 'random-768']
    .map((m) => [m, at(m, 'f32'), at(m, 'int8-integer')] as const)
    .filter(([, f0, d0]) => f0 && d0)
    .map(([m, f0, d0]) => `${x(f0!.decodeTokS, d0!.decodeTokS)} at ${m}`)
    .join(', ');
  out.push(
    '- **Therefore.** Dequantize-at-load is the right int8 strategy only while f32 weights are affordable in memory *and* the GEMMs are too small to matter ' +
      '(stories260K: it is exact f32 arithmetic on int8-rounded weights, the most faithful int8, and ships 4× fewer bytes). From dim ~256 on, MatMulInteger ' +
      'wins where it counts: faster TTFT (what LazyLLM is for, and the two multiply), a quarter of the weight memory, decode close to f32 ' +
      `(time per token ${dDecode || 'not measured here'}), for a fraction of a percent of perplexity. ` +
      'DequantizeLinear-every-run has no use. MatMulNBits is the only way to hold int4 weights, but it decodes several times slower and int4 costs real ' +
      'perplexity on small models: a last resort for a model that fits no other way.',
  );
  return out.join('\n');
}

function gitCommit(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no', 'src'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
    return `${head}${dirty ? '+dirty' : ''}`;
  } catch {
    return 'unknown';
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      out: { type: 'string', default: join(REPO_ROOT, 'docs', 'QUANTIZATION.md') },
      models: { type: 'string', default: MODELS.map((m) => m.id).join(',') },
      /** re-render the doc from a report saved with --json, without measuring */
      render: { type: 'string' },
      child: { type: 'string' },
    },
  });
  if (values.render) {
    const saved = JSON.parse(readFileSync(values.render, 'utf8')) as Report;
    writeFileSync(values.out, renderDoc(saved, MODELS.filter((m) => saved.rows.some((r) => r.model === m.id))));
    progress(`wrote ${relative(REPO_ROOT, values.out)} from ${values.render}`);
    return;
  }
  if (values.child) {
    const result = await runChild(JSON.parse(readFileSync(values.child, 'utf8')) as ChildJob);
    process.stdout.write(`${JSON.stringify(result)}\n`);
    process.exit(0); // onnxruntime's wasm keeps the event loop alive
  }
  const quick = values.quick;
  const wanted = values.models.split(',').map((m) => m.trim());
  const models = MODELS.filter((m) => wanted.includes(m.id));
  const unknown = wanted.filter((w) => !MODELS.some((m) => m.id === w));
  if (unknown.length) fail(`--models: unknown ${unknown.join(', ')} (known: ${MODELS.map((m) => m.id).join(', ')})`);
  if (!existsSync(DEFAULT_DATA)) fail(`no dev text at ${DEFAULT_DATA} (set LAZY_EDGE_DATA)`);

  const tok = Tokenizer.fromLlama2c(readBytes(join(DEFAULT_MODEL_DIR, 'tok512.bin')), 512, 'tok512.bin');
  const stories = readFileSync(DEFAULT_DATA, 'utf8').split('\n').filter((l) => l.trim().length > 0);
  const stream = storyStream(tok, stories);
  const nWindows = Math.min(quick ? 4 : 14, Math.floor(stream.length / PPL_WINDOW));
  const pplWindows = promptWindows(stream, PPL_WINDOW, 0, nWindows, tok.bosId).map((w) => w.prompt);

  const loadStart = loadPerCore();
  progress(`${quick ? 'quick' : 'full'} run; load per core ${loadStart.toFixed(2)}`);
  const baseline = (await spawnChild({ kind: 'runtime', dir: '', fold: true, lengths: [], reps: {}, decode: 0, prompts: {}, pplWindows: [], warmup: [] }, 'runtime')) as {
    heapMb: number;
    rssMb: number;
  };
  progress(`runtime baseline: wasm heap ${baseline.heapMb.toFixed(1)} MB, RSS ${baseline.rssMb.toFixed(0)} MB`);

  const rows: Row[] = [];
  for (const model of models) {
    const cfg = model.config();
    const prompts = Object.fromEntries(model.lengths.map((l) => [String(l), promptWindows(stream, l, 0, 1, tok.bosId)[0].prompt]));
    const strategies = STRATEGIES.filter((s) => !s.extra || (model.perplexity && !quick));
    for (const st of strategies) {
      const dir = await shardsFor(model, st.quant, progress);
      progress(`${model.id} ${st.id}: ${st.what}`);
      const job: ChildJob = {
        kind: 'model',
        dir,
        fold: st.fold,
        lengths: model.lengths,
        reps: Object.fromEntries(model.lengths.map((l) => [String(l), model.reps(l, quick)])),
        decode: model.decode(quick),
        prompts,
        pplWindows: model.perplexity ? pplWindows : [],
        warmup: model.warmup(quick),
      };
      const r = (await spawnChild(job, `${model.id}-${st.id}`)) as ChildResult;
      const est = estimateMemory(cfg, st.quant);
      rows.push({
        model: model.id,
        strategy: st.id,
        letter: st.letter,
        quant: quantLabel(st.quant) + (st.quant.kernel === 'dequant' && !st.fold ? ' (no fold)' : ''),
        what: st.what,
        shardMb: shardBytes(dir) / MB,
        estimateMb: est.total / MB,
        fitsBudget: est.total <= DEFAULT_MEMORY_BUDGET_BYTES,
        loadMs: r.loadMs.wallMs,
        heapAfterLoadMb: r.heapAfterLoadMb,
        heapAfterContextMb: r.heapAfterContextMb,
        heapPeakMb: r.heapPeakMb,
        peakRssMb: r.peakRssMb,
        ttftMs: Object.fromEntries(Object.entries(r.prefill).map(([l, p]) => [l, Math.min(...p.cpuMs)])),
        ttftMedianMs: Object.fromEntries(Object.entries(r.prefill).map(([l, p]) => [l, median(p.cpuMs)])),
        ttftWallMs: Object.fromEntries(Object.entries(r.prefill).map(([l, p]) => [l, Math.min(...p.wallMs)])),
        decodeTokS: Math.max(...r.decode.chunks.map((c) => (c.tokens * 1000) / c.cpuMs)),
        decodeWallTokS: Math.max(...r.decode.chunks.map((c) => (c.tokens * 1000) / c.wallMs)),
        ppl: r.nll ? Math.exp(r.nll.sum / r.nll.count) : null,
        pplChange: null,
      });
    }
    const f32 = rows.find((r) => r.model === model.id && r.strategy === 'f32');
    for (const r of rows) if (r.model === model.id && r.ppl !== null && f32?.ppl) r.pplChange = r.ppl / f32.ppl - 1;
  }

  const ortVersion = JSON.parse(readFileSync(join(REPO_ROOT, 'node_modules/onnxruntime-web/package.json'), 'utf8')).version as string;
  const argv = process.argv.slice(2).filter((a) => a !== '--json');
  const report: Report = {
    command: `npm run quant-bench${argv.length ? ` -- ${argv.join(' ')}` : ''}`,
    quick,
    date: new Date().toISOString().slice(0, 10),
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? '?', node: process.version, onnxruntimeWeb: ortVersion, loadPerCoreStart: loadStart, loadPerCoreEnd: loadPerCore() },
    runtimeBaseline: baseline,
    commit: gitCommit(),
    rows,
  };
  mkdirSync(dirname(values.out), { recursive: true });
  writeFileSync(values.out, renderDoc(report, models));
  progress(`wrote ${relative(REPO_ROOT, values.out)}`);
  if (values.json) process.stdout.write(`${JSON.stringify(report)}\n`);
}

runMain(main);

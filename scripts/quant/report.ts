/** scripts/quant/bench.ts's report: the rows measured, rendered as docs/QUANTIZATION.md. */
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { loadPerCore } from '../lib/clock.js';
import { REPO_ROOT } from '../lib/node-env.js';
import {
  defaultQuant,
  DEFAULT_MEMORY_BUDGET_BYTES,
  estimateMemory,
  INTEGER_KERNEL_MIN_DIM,
  MB,
  RUNTIME_OVERHEAD_BYTES,
} from '../../src/engine/memory-budget.js';
import { llama2cConfig, type ModelConfig, type ModelShape } from '../../src/model/config.js';
import { quantLabel, type QuantSpec } from '../../src/model/quant.js';
import { DECODE_CONTEXT, F32, INT8_DQ, int4, PPL_WINDOW, type BenchModel } from './models.js';

export interface Row {
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

const fmt = (v: number | null | undefined, d = 1) =>
  v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(d);
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
const FIT_FORMATS: QuantSpec[] = [
  F32,
  INT8_DQ,
  { format: 'int8', kernel: 'integer' },
  int4(32, 'dequant'),
  int4(32, 'nbits'),
];

export function fitsTable(): string {
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

export function table(rows: Row[], withPpl: boolean, lengths: number[]): string {
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

/** Where a quant-bench run measured: the machine, the runtime, and its load per core at the start and end. */
export interface Machine {
  cpus: number;
  cpuModel: string;
  node: string;
  onnxruntimeWeb: string;
  loadPerCoreStart: number;
  loadPerCoreEnd: number;
}

/** This machine now, for a run that started at `loadPerCoreStart`. */
export function thisMachine(loadPerCoreStart: number): Machine {
  const ortPackage = join(REPO_ROOT, 'node_modules/onnxruntime-web/package.json');
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? '?',
    node: process.version,
    onnxruntimeWeb: (JSON.parse(readFileSync(ortPackage, 'utf8')) as { version: string }).version,
    loadPerCoreStart,
    loadPerCoreEnd: loadPerCore(),
  };
}

export interface Report {
  command: string;
  quick: boolean;
  date: string;
  machine: Machine;
  /** the commit measured, "+dirty" when the working tree had changes */
  commit: string;
  runtimeBaseline: { heapMb: number; rssMb: number };
  rows: Row[];
}

function find(rows: Row[], model: string, id: string): Row | undefined {
  return rows.find((r) => r.model === model && r.strategy === id);
}

export function renderDoc(rep: Report, models: BenchModel[]): string {
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

Generated by \`${rep.command}\` (scripts/quant/bench.ts, commit ${rep.commit})${rep.quick ? ' in **--quick** mode (fewer repetitions: treat small differences as noise)' : ''} on ${rep.date}.
Machine: ${m.cpus} × ${m.cpuModel}, Node ${m.node}, onnxruntime-web ${m.onnxruntimeWeb}; load per core ${fmt(m.loadPerCoreStart, 2)} at the start, ${fmt(m.loadPerCoreEnd, 2)} at the end
(the machine is shared, so times are **on-CPU** milliseconds of the single inference thread; \`--json\` also has wall times).

Every row is a separate process. TTFT = one dense prefill step (\`runStep\`, no pruning: this measures the kernels,
and LazyLLM's savings multiply whatever they give) from prompt ids to the last token's logits, the best of the repetitions
after a warm-up (noise on a shared machine only ever adds time). Decode = greedy tokens after a ${DECODE_CONTEXT}-token prompt, timed in
four chunks, best chunk. *wasm heap* is onnxruntime's WebAssembly memory (it never shrinks: a high-water mark) once every session
exists (weights as held for running, plus the runtime's ${fmt(rep.runtimeBaseline.heapMb, 0)} MB baseline), after the ${DECODE_CONTEXT}-token prefills
and decode, and after the longest prefill (what activations add). *peak RSS* includes Node's own ~${fmt(rep.runtimeBaseline.rssMb, 0)} MB.
*estimate* is \`estimateMemory\` (src/engine/memory-budget.ts): weights as held + KV and Aux caches at full context + the measured load copies or activations + tokenizer + ${RUNTIME_OVERHEAD_BYTES / MB} MB runtime (the table's figure is from the estimate of the run's date).
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
f32 KV cache and Aux Cache for every position, tokenizer, ${RUNTIME_OVERHEAD_BYTES / MB} MB runtime, and the larger of two measured terms that share the wasm
memory: the copies that creating the largest piece's session leaves in it (the shard copied in, parsed, folded or prepacked:
per byte of that piece, 6.1 for f32 MatMul, 5.6 for folded int8, 12.7 for folded int4, ~3-5 for the integer and MatMulNBits
kernels, from this page's random-768 heaps and docs/MEMORY.md) and the run's activations. \`loadModel\` refuses a model above the budget
(\`EngineError\` code \`model_too_large\`, naming each part; \`LAZY_EDGE_MEMORY_BUDGET_MB\` or \`memoryBudgetBytes\` changes it).
Folding at load is what keeps f32-in-memory builds out now: a 32000-row f32 classifier is one 37 MB piece (stories15M) whose
session creation needs six times that for a moment, and the wasm memory keeps the high-water mark. The KV cache keeps the
bigger shapes out whatever the weight format: f32, every layer, every position (144 MB for 12 × 768 at 2048 tokens).

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
  const cols = [
    'model',
    'strategy',
    'TTFT 512',
    'TTFT 2048',
    'decode time / token',
    'wasm heap after load',
    'shard bytes',
    'perplexity',
  ];
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
    const ttfts = rep.rows
      .filter((r) => r.model === 'stories260K' && !r.strategy.includes('-b'))
      .map((r) => r.ttftMs[512]);
    out.push(
      `- **Quality (stories260K, the only real weights).** int8 per channel moves perplexity by ${pct(s('int8-fold')!.pplChange)}: within the +1% bar, ` +
        `i.e. free. The integer kernel also rounds every activation row to uint8 (per tensor) and costs ${pct(s('int8-integer')?.pplChange ?? null)}, still within the bar. ` +
        `int4 costs ${pct(s('int4-fold')?.pplChange ?? null)} with blocks of 32` +
        (s('int4-b16-fold') && s('int4-b64-fold')
          ? ` (${pct(s('int4-b16-fold')!.pplChange)} with 16, ${pct(s('int4-b64-fold')!.pplChange)} with 64)`
          : '') +
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

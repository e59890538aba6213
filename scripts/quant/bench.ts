/**
 * npm run quant-bench -- [--quick] [--json] [--out docs/QUANTIZATION.md] [--models stories260K,random-768]
 * npm run quant-bench -- --gguf FILE | --model DIR [--configs dequant,nbits,...] [--reps 1] [--json]
 *
 * With --gguf (or --model, a GGUF build's shards: the GGUF is found by its manifest's source) the GGUF
 * weight kernels are measured on the model's own shapes instead (gguf.ts) and written
 * into their own section of the doc, leaving the rest as it is.
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
import { dirname, join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_MEMORY_BUDGET_BYTES, estimateMemory, MB } from '../../src/engine/memory-budget.js';
import { quantLabel, type QuantSpec } from '../../src/model/quant.js';
import { Tokenizer } from '../../src/model/tokenizer.js';
import type { ShardSource } from '../../src/shards/build-shards.js';
import { loadPerCore } from '../lib/clock.js';
import {
  DEFAULT_DATA,
  DEFAULT_MODEL_DIR,
  fail,
  initNodeRuntime,
  readBytes,
  REPO_ROOT,
  runMain,
} from '../lib/node-env.js';
import { promptWindows, storyStream } from '../lib/prompts.js';
import { runChild, type ChildJob, type ChildResult } from './child.js';
import { MODELS, PPL_WINDOW, STRATEGIES, type BenchModel } from './models.js';
import { renderDoc, thisMachine, type Report, type Row } from './report.js';
import { buildAndWrite, sourceFromCheckpoint, sourceFromGguf, sourceFromRandom, upToDate } from '../lib/shard-tasks.js';
import {
  FIDELITY_TEXTS,
  FIDELITY_TOKENS,
  GGUF_CONFIGS,
  kernelsOf,
  PREFILL_LENGTHS,
  renderGgufSection,
  runGgufChild,
  SECTION_BEGIN,
  SECTION_END,
  spliceSection,
  TIMING_TEXT,
  type GgufChildJob,
  type GgufChildResult,
  type GgufReport,
  type GgufRow,
} from './gguf.js';
import { ggufQuant, ggufWeightBytes } from '../../src/model/quant.js';
import { BpeTokenizer } from '../../src/model/bpe-tokenizer.js';
import { locateServedGguf, servedShardsDir, sha256File } from '../lib/served-model.js';
import type { ModelConfig } from '../../src/model/config.js';
import { basename, resolve } from 'node:path';
import { median } from '../lib/stats.js';
import { peakJob, runPeakChild, type PeakChildJob, type PeakResult } from './peak.js';
import { runDecodeOpsChild, type DecodeOpsJob, type DecodeOpsResult } from './decode-ops.js';

// The parts: models.ts (what is measured), child.ts (one model in one strategy, in its own process),
// report.ts (docs/QUANTIZATION.md). Here: the orchestrator.

const CACHE = join(REPO_ROOT, '.bench-cache', 'quant');
const t0 = Date.now();
const progress = (m: string) =>
  process.stderr.write(`[quant-bench ${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${m}\n`);

function spawnChild(job: ChildJob, tag: string): Promise<unknown> {
  mkdirSync(CACHE, { recursive: true });
  const file = join(CACHE, `job-${tag}.json`);
  writeFileSync(file, JSON.stringify(job));
  return new Promise((resolve, reject) => {
    // --no-liftoff: V8 compiles onnxruntime's wasm with its optimizing tier up front. Otherwise the first
    // runs execute baseline code while tier-up competes for the (shared) cores, and every figure
    // would depend on how long the process had been running; a warm isolate runs optimized code.
    const child = spawn(
      process.execPath,
      ['--no-liftoff', '--import', 'tsx', join(REPO_ROOT, 'scripts/quant/bench.ts'), '--child', file],
      {
        cwd: REPO_ROOT,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
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

async function shardsFor(model: BenchModel, q: QuantSpec, log: (l: string) => void): Promise<string> {
  const dir = join(CACHE, model.id, quantLabel(q).replace(/\//g, '-'));
  const tokenizer = join(DEFAULT_MODEL_DIR, 'tok512.bin');
  if (!model.synthetic) {
    const source = await sourceFromCheckpoint({
      checkpoint: join(DEFAULT_MODEL_DIR, 'stories260K.bin'),
      tokenizer,
      name: model.id,
    });
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
  return [...m.files.embed, ...m.files.layers, ...m.files.head].reduce(
    (s: number, f: { bytes: number }) => s + f.bytes,
    0,
  );
}

function gitCommit(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no', 'src'], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
    }).trim();
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
      gguf: { type: 'string' },
      model: { type: 'string' },
      configs: { type: 'string' },
      reps: { type: 'string', default: '1' },
      /** GGUF: keep the saved report's rows for configurations not run this time */
      merge: { type: 'boolean', default: false },
      /** a decode step's weight products one matrix at a time, per kernel (decode-ops.ts) */
      'decode-ops': { type: 'boolean', default: false },
    },
  });
  if (values.child) {
    const job = JSON.parse(readFileSync(values.child, 'utf8')) as ChildJob | GgufChildJob | PeakChildJob | DecodeOpsJob;
    const result =
      job.kind === 'gguf'
        ? await runGgufChild(job, initNodeRuntime)
        : job.kind === 'peak'
          ? await runPeakChild(job, initNodeRuntime)
          : job.kind === 'decode-ops'
            ? await runDecodeOpsChild(job, initNodeRuntime)
            : await runChild(job);
    process.stdout.write(`${JSON.stringify(result)}\n`);
    process.exit(0); // onnxruntime's wasm keeps the event loop alive
  }
  if (values['decode-ops']) return decodeOpsMain(values.model ?? servedShardsDir());
  if (values.gguf !== undefined || values.model !== undefined) return ggufMain(values);
  if (values.render) {
    const saved = JSON.parse(readFileSync(values.render, 'utf8')) as Report | GgufReport;
    if ('kvPerTokenF32' in saved) {
      const doc = existsSync(values.out) ? readFileSync(values.out, 'utf8') : '';
      writeFileSync(values.out, spliceSection(doc, renderGgufSection(saved)));
      progress(`wrote the GGUF section of ${relative(REPO_ROOT, values.out)} from ${values.render}`);
      return;
    }
    writeFileSync(
      values.out,
      keepGgufSection(
        values.out,
        renderDoc(
          saved,
          MODELS.filter((m) => saved.rows.some((r) => r.model === m.id)),
        ),
      ),
    );
    progress(`wrote ${relative(REPO_ROOT, values.out)} from ${values.render}`);
    return;
  }
  const quick = values.quick;
  const wanted = values.models.split(',').map((m) => m.trim());
  const models = MODELS.filter((m) => wanted.includes(m.id));
  const unknown = wanted.filter((w) => !MODELS.some((m) => m.id === w));
  if (unknown.length) fail(`--models: unknown ${unknown.join(', ')} (known: ${MODELS.map((m) => m.id).join(', ')})`);
  if (!existsSync(DEFAULT_DATA)) fail(`no dev text at ${DEFAULT_DATA} (set LAZY_EDGE_DATA)`);

  const tok = Tokenizer.fromLlama2c(readBytes(join(DEFAULT_MODEL_DIR, 'tok512.bin')), 512, 'tok512.bin');
  const stories = readFileSync(DEFAULT_DATA, 'utf8')
    .split('\n')
    .filter((l) => l.trim().length > 0);
  const stream = storyStream(tok, stories);
  const nWindows = Math.min(quick ? 4 : 14, Math.floor(stream.length / PPL_WINDOW));
  const pplWindows = promptWindows(stream, PPL_WINDOW, 0, nWindows, tok.bosId).map((w) => w.prompt);

  const loadStart = loadPerCore();
  progress(`${quick ? 'quick' : 'full'} run; load per core ${loadStart.toFixed(2)}`);
  const baseline = (await spawnChild(
    { kind: 'runtime', dir: '', fold: true, lengths: [], reps: {}, decode: 0, prompts: {}, pplWindows: [], warmup: [] },
    'runtime',
  )) as {
    heapMb: number;
    rssMb: number;
  };
  progress(`runtime baseline: wasm heap ${baseline.heapMb.toFixed(1)} MB, RSS ${baseline.rssMb.toFixed(0)} MB`);

  const rows: Row[] = [];
  for (const model of models) {
    const cfg = model.config();
    const prompts = Object.fromEntries(
      model.lengths.map((l) => [String(l), promptWindows(stream, l, 0, 1, tok.bosId)[0].prompt]),
    );
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

  const argv = process.argv.slice(2).filter((a) => a !== '--json');
  const report: Report = {
    command: `npm run quant-bench${argv.length ? ` -- ${argv.join(' ')}` : ''}`,
    quick,
    date: new Date().toISOString().slice(0, 10),
    machine: thisMachine(loadStart),
    runtimeBaseline: baseline,
    commit: gitCommit(),
    rows,
  };
  mkdirSync(dirname(values.out), { recursive: true });
  writeFileSync(values.out, keepGgufSection(values.out, renderDoc(report, models)));
  progress(`wrote ${relative(REPO_ROOT, values.out)}`);
  if (values.json) process.stdout.write(`${JSON.stringify(report)}\n`);
}

/** The llama2.c tables are regenerated whole; a GGUF section already in the doc is carried over. */
function keepGgufSection(path: string, doc: string): string {
  if (!existsSync(path)) return doc;
  const old = readFileSync(path, 'utf8');
  const a = old.indexOf(SECTION_BEGIN);
  const b = old.indexOf(SECTION_END);
  return a >= 0 && b > a ? spliceSection(doc, old.slice(a, b + SECTION_END.length)) : doc;
}

/** The GGUF behind --gguf FILE, or behind a GGUF build's shards (--model DIR): the served file when the hashes match. */
async function ggufPath(values: { gguf?: string; model?: string }): Promise<string> {
  if (values.gguf !== undefined) {
    if (!existsSync(values.gguf)) fail(`--gguf ${values.gguf}: no such file`);
    return values.gguf;
  }
  const manifestPath = join(values.model!, 'manifest.json');
  if (!existsSync(manifestPath))
    fail(`--model ${values.model}: no manifest.json there (build shards with npm run shards)`);
  const m = JSON.parse(readFileSync(manifestPath, 'utf8'));
  if (m.quant?.format !== 'gguf')
    fail(
      `--model ${values.model}: its shards were not built from a GGUF (quant.format ${m.quant?.format}); run without --model for llama2.c checkpoints`,
    );
  const served = await locateServedGguf().catch(() => null);
  if (served && served.sha256 === m.source?.sha256) return served.path;
  const beside = resolve(values.model!, '..', '..', '..', 'shared', 'models');
  fail(
    `--model ${values.model}: cannot find ${m.source?.file} (sha256 ${m.source?.sha256}); pass it with --gguf FILE${existsSync(beside) ? ` (look in ${beside})` : ''}`,
  );
}

/** --decode-ops: the model's decode shapes (from its manifest) in every kernel, one process; JSON on stdout. */
async function decodeOpsMain(dir: string): Promise<void> {
  const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as {
    config: ModelConfig;
    files: { head: { rows: number }[] };
  };
  const job: DecodeOpsJob = {
    kind: 'decode-ops',
    config: m.config,
    headRows: m.files.head.map((p) => p.rows),
    rows: 1,
    budgetMs: 400,
  };
  progress(
    `decode shapes of ${relative(REPO_ROOT, dir)}, one activation row; load per core ${loadPerCore().toFixed(2)}`,
  );
  const r = (await spawnChild(job as unknown as ChildJob, 'decode-ops')) as DecodeOpsResult;
  for (const [kernel, t] of Object.entries(r.perToken))
    progress(
      `${kernel}: a token's weight products ${t.totalMs.toFixed(2)} ms (layers ${t.layersMs.toFixed(2)}, classifier ${t.headMs.toFixed(2)})`,
    );
  progress(`load per core ${loadPerCore().toFixed(2)} at the end`);
  process.stdout.write(`${JSON.stringify(r)}\n`);
}

async function ggufMain(values: {
  gguf?: string;
  model?: string;
  configs?: string;
  reps?: string;
  out: string;
  json?: boolean;
  merge?: boolean;
}): Promise<void> {
  const path = await ggufPath(values);
  const wanted = values.configs ? values.configs.split(',').map((c) => c.trim()) : GGUF_CONFIGS.map((c) => c.id);
  const unknown = wanted.filter((w) => !GGUF_CONFIGS.some((c) => c.id === w));
  if (unknown.length)
    fail(`--configs: unknown ${unknown.join(', ')} (known: ${GGUF_CONFIGS.map((c) => c.id).join(', ')})`);
  if (!wanted.includes('dequant'))
    fail('--configs must include dequant: it is the exact-weights reference every other row is compared with');
  const reps = Number(values.reps);
  if (!Number.isInteger(reps) || reps < 1) fail(`--reps "${values.reps}" is not a positive integer`);
  const configs = GGUF_CONFIGS.filter((c) => wanted.includes(c.id));
  const sha256 = await sha256File(path);
  const source = await sourceFromGguf(path, basename(path).replace(/\.gguf$/i, ''), sha256);
  const cfg = source.model.config;
  const cache = join(CACHE, `gguf-${sha256.slice(0, 12)}`);
  mkdirSync(cache, { recursive: true });

  // Prompts from the model's own tokenizer, built once with the first configuration's shards.
  const loadStart = loadPerCore();
  progress(`${source.model.displayName}: ${configs.length} configurations; load per core ${loadStart.toFixed(2)}`);
  const dirs = new Map<string, string>();
  for (const c of configs) {
    const dir = join(cache, c.id);
    const quant = ggufQuant(kernelsOf(c));
    const headRowsOk = (() => {
      try {
        return JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')).files.head.length >= c.headParts;
      } catch {
        return false;
      }
    })();
    if (!upToDate(dir, source, quant) || !headRowsOk) {
      progress(`building ${c.id} (${c.kernel}) -> ${relative(REPO_ROOT, dir)}`);
      await buildAndWrite(dir, { ...source, kernels: kernelsOf(c), headParts: c.headParts });
    }
    dirs.set(c.id, dir);
  }
  const first = JSON.parse(readFileSync(join(dirs.get('dequant')!, 'manifest.json'), 'utf8'));
  const tok = BpeTokenizer.fromJson(
    JSON.parse(readFileSync(join(dirs.get('dequant')!, first.tokenizer.file), 'utf8')),
    first.tokenizer,
    first.tokenizer.file,
  );
  const dataDir = dirname(DEFAULT_DATA);
  const text = (f: string) => {
    const p = join(dataDir, f);
    if (!existsSync(p)) fail(`no text at ${p} (LAZY_EDGE_DATA's folder holds the shared texts)`);
    return readFileSync(p, 'utf8');
  };
  const prompt = tok.encode(text(TIMING_TEXT)).slice(0, Math.max(...PREFILL_LENGTHS));
  if (prompt.length < Math.max(...PREFILL_LENGTHS)) fail(`${TIMING_TEXT} has only ${prompt.length} tokens`);
  const windows = FIDELITY_TEXTS.map((t) => tok.encode(text(t)).slice(0, FIDELITY_TOKENS));

  const baseline = (await spawnChild(
    { kind: 'runtime', dir: '', fold: true, lengths: [], reps: {}, decode: 0, prompts: {}, pplWindows: [], warmup: [] },
    'runtime',
  )) as { heapMb: number };
  // The wasm MatMul peak on the layers' shapes, in this run, for the prefills to be read against (peak.ts).
  progress('MatMul peak on the layer shapes');
  const peak = (await spawnChild(peakJob(cfg) as unknown as ChildJob, 'matmul-peak')) as PeakResult;
  const rows: GgufRow[] = [];
  const referenceFile = join(cache, 'reference-logprobs.f32');
  for (const c of configs.sort((a, b) => (a.id === 'dequant' ? -1 : b.id === 'dequant' ? 1 : 0))) {
    const dir = dirs.get(c.id)!;
    progress(`${c.id}: ${c.what}`);
    const job: GgufChildJob = {
      kind: 'gguf',
      dir,
      prompt,
      windows,
      referenceFile,
      reference: c.id === 'dequant',
      reps,
    };
    const result = (await spawnChild(job as unknown as ChildJob, `gguf-${c.id}`)) as GgufChildResult;
    const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
    rows.push({
      id: c.id,
      kernel: c.kernel,
      what: c.what,
      headParts: m.files.head.length,
      shardMb: shardBytes(dir) / MB,
      bytes: ggufWeightBytes(cfg, kernelsOf(c)),
      nLayers: cfg.nLayers,
      result,
      peak,
    });
  }
  const argv = process.argv.slice(2).filter((a) => a !== '--json');
  const report: GgufReport = {
    command: `npm run quant-bench -- ${argv.join(' ')}`,
    date: new Date().toISOString().slice(0, 10),
    commit: gitCommit(),
    model: source.model.displayName,
    gguf: basename(path),
    machine: thisMachine(loadStart),
    runtimeHeapMb: baseline.heapMb,
    kvPerTokenF32: cfg.nLayers * 2 * cfg.kvDim * 4,
    config: cfg,
    rows,
  };
  const saved = join(cache, 'report.json');
  const refRow = rows.find((r) => r.id === 'dequant')!;
  for (const r of rows) r.ref = { prefillCpuMs: refRow.result.prefillCpuMs, decodeTokS: refRow.result.decodeTokS };
  if (values.merge && existsSync(saved)) {
    // Rows of configurations not run now come from the saved report, each keeping its own run's reference; the header names every run.
    const old = JSON.parse(readFileSync(saved, 'utf8')) as GgufReport;
    const oldRef = old.rows.find((r) => r.id === 'dequant');
    const lastRun = Math.max(1, ...old.rows.map((r) => r.run ?? 1));
    for (const r of old.rows) {
      r.run ??= 1;
      if (!r.ref && oldRef) r.ref = { prefillCpuMs: oldRef.result.prefillCpuMs, decodeTokS: oldRef.result.decodeTokS };
    }
    for (const r of rows) r.run = lastRun + 1;
    const byId = new Map([...old.rows, ...rows].map((r) => [r.id, r]));
    report.rows = GGUF_CONFIGS.map((c) => byId.get(c.id)).filter((r): r is GgufRow => r !== undefined);
    report.command = `${old.command}, then ${report.command}`;
    report.commit = `${old.commit}, then ${report.commit}`;
  }
  writeFileSync(saved, JSON.stringify(report, null, 1));
  const doc = existsSync(values.out)
    ? readFileSync(values.out, 'utf8')
    : '# Quantized weights on onnxruntime-web (wasm, one thread)\n';
  writeFileSync(values.out, spliceSection(doc, renderGgufSection(report)));
  progress(`wrote ${relative(REPO_ROOT, values.out)} (report ${relative(REPO_ROOT, join(cache, 'report.json'))})`);
  if (values.json) process.stdout.write(`${JSON.stringify(report)}\n`);
}

runMain(main);

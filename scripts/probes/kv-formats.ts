/**
 * npm run kv-formats -- [--model DIR] [--tokens 2048,4096] [--windows 2] [--next 16] [--text FILE] [--json]
 *
 * What holding the KV cache as f16 or int8 costs in fidelity and speed, against f32, side by side on
 * the same windows of text: a dense prefill of the window, then `--next` teacher-forced decode steps
 * (each reads the whole cache back in its format). Per format and length: mean KL of the next-token
 * distributions against the f32 cache's over every step (prefill included), the share of steps whose
 * top-1 token agrees, the prefill time and the decode step time (medians, ratios to f32 in the same
 * run), and the cache's bytes per token. Progress on stderr; --json prints one object on stdout.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { SequenceState } from '../../src/engine/caches.js';
import { decodeLoop, nextStep } from '../../src/engine/decode-loop.js';
import { kvRowBytes, KV_FORMATS, type KvFormat } from '../../src/engine/kv-rows.js';
import { argmax } from '../../src/engine/logits.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { fail, loadModelFromDir, REPO_ROOT, runMain } from '../lib/node-env.js';
import { evalStream, promptWindows } from '../lib/prompts.js';
import { servedShardsDir } from '../lib/served-model.js';
import { klDivergence, median } from '../lib/stats.js';

const t0 = Date.now();
const progress = (m: string) =>
  process.stderr.write(`[kv-formats ${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${m}\n`);

interface Run {
  logits: Float32Array[];
  prefillMs: number;
  stepMs: number[];
}

async function teacherForced(model: LoadedModel, format: KvFormat, prompt: number[], next: number[]): Promise<Run> {
  const m: LoadedModel = { ...model, config: { ...model.config, kvFormat: format } };
  const loop = decodeLoop(m, new SequenceState(m.config), prompt, { schedule: null, pick: (_, k) => next[k] });
  const first = await nextStep(loop);
  const logits = [first.logits];
  const stepMs: number[] = [];
  for (let k = 0; k < next.length; k++) {
    const s = await nextStep(loop);
    logits.push(s.logits);
    stepMs.push(s.stats.ms);
  }
  return { logits, prefillMs: first.stats.ms, stepMs };
}

async function main() {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      tokens: { type: 'string', default: '2048,4096' },
      windows: { type: 'string', default: '2' },
      next: { type: 'string', default: '16' },
      text: { type: 'string', default: resolve(REPO_ROOT, '../shared/data/mpl-2.0.txt') },
      json: { type: 'boolean', default: false },
    },
  });
  const lengths = values.tokens.split(',').map(Number);
  const windows = Number(values.windows);
  const nextN = Number(values.next);
  if (lengths.some((l) => !Number.isInteger(l) || l < 2) || !(windows >= 1) || !(nextN >= 1))
    fail('--tokens, --windows and --next take positive integers');
  let text: string;
  try {
    text = readFileSync(values.text, 'utf8');
  } catch (e) {
    fail(`--text ${values.text}: ${(e as Error).message}`);
  }
  // Measuring, not serving: the isolate budget does not apply.
  const model = await loadModelFromDir(values.model ?? servedShardsDir(), {
    contextTokens: Math.max(...lengths) + nextN + 1,
    memoryBudgetBytes: Infinity,
  });
  const stream = evalStream(model.tokenizer, text);
  const cfg = model.config;
  const rows: Record<string, unknown>[] = [];
  for (const len of lengths) {
    const cases = promptWindows(stream, len, nextN, windows, model.tokenizer.addBos ? model.tokenizer.bosId : null);
    if (cases.length < windows)
      fail(`${values.text} holds ${stream.length} tokens: too few for ${windows} windows of ${len + nextN}`);
    const acc = new Map<KvFormat, { kl: number[]; agree: number[]; prefill: number[]; step: number[] }>(
      KV_FORMATS.map((f) => [f, { kl: [], agree: [], prefill: [], step: [] }]),
    );
    // Untimed: the first run of a process also pays for compiling the hot code.
    if (lengths.indexOf(len) === 0)
      for (const f of KV_FORMATS)
        await teacherForced(model, f, cases[0].prompt.slice(0, 256), cases[0].next.slice(0, 4));
    for (const [k, w] of cases.entries()) {
      // Formats interleaved per window, so that the machine's load falls on all of them alike.
      const runs = new Map<KvFormat, Run>();
      for (const f of KV_FORMATS) {
        progress(`${len} tokens, window ${k + 1}/${cases.length}: ${f}`);
        runs.set(f, await teacherForced(model, f, w.prompt, w.next));
      }
      const ref = runs.get('f32')!;
      for (const [f, r] of runs) {
        const a = acc.get(f)!;
        r.logits.forEach((l, i) => {
          a.kl.push(klDivergence(ref.logits[i], l));
          a.agree.push(argmax(ref.logits[i]) === argmax(l) ? 1 : 0);
        });
        a.prefill.push(r.prefillMs);
        a.step.push(median(r.stepMs));
      }
    }
    const base = acc.get('f32')!;
    for (const [f, a] of acc) {
      const row = {
        tokens: len,
        kv_format: f,
        kv_bytes_per_token: cfg.nLayers * 2 * kvRowBytes(f, cfg.kvDim),
        mean_kl: a.kl.reduce((s, x) => s + x, 0) / a.kl.length,
        max_kl: Math.max(...a.kl),
        top1_agreement: a.agree.reduce((s, x) => s + x, 0) / a.agree.length,
        prefill_ms: median(a.prefill),
        decode_step_ms: median(a.step),
        prefill_vs_f32: median(a.prefill) / median(base.prefill),
        decode_step_vs_f32: median(a.step) / median(base.step),
        steps: a.kl.length,
      };
      rows.push(row);
      progress(
        `${len} ${f.padEnd(4)}: ${row.kv_bytes_per_token} B/token, mean KL ${row.mean_kl.toExponential(2)} (max ${row.max_kl.toExponential(2)}), top-1 ${(row.top1_agreement * 100).toFixed(1)}%, ` +
          `prefill ${row.prefill_ms.toFixed(0)} ms (${row.prefill_vs_f32.toFixed(2)}x), decode step ${row.decode_step_ms.toFixed(1)} ms (${row.decode_step_vs_f32.toFixed(2)}x)`,
      );
    }
  }
  const out = {
    model: model.manifest.name,
    quant: `${model.quant.format}/${model.quant.kernel}`,
    text: values.text,
    windows,
    next: nextN,
    rows,
  };
  if (values.json) process.stdout.write(`${JSON.stringify(out)}\n`);
  else {
    process.stdout.write(
      '| tokens | KV format | bytes/token | mean KL vs f32 | max KL | top-1 agreement | prefill vs f32 | decode step vs f32 |\n|---|---|---|---|---|---|---|---|\n',
    );
    for (const r of rows as Array<Record<string, number | string>>) {
      const n = (k: string) => Number(r[k]);
      process.stdout.write(
        `| ${r.tokens} | ${r.kv_format} | ${r.kv_bytes_per_token} | ${n('mean_kl').toExponential(2)} | ${n('max_kl').toExponential(2)} | ${(n('top1_agreement') * 100).toFixed(1)}% | ${n('prefill_vs_f32').toFixed(2)}x | ${n('decode_step_vs_f32').toFixed(2)}x |\n`,
      );
    }
  }
}

runMain(main);

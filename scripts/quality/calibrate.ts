/**
 * npm run calibrate -- --data FILE [--tokens 512] [--prompts N] [--next N] [--reps N]
 *                      [--schedules "SPEC;SPEC;..."] [--model DIR] [--json] [--out docs/calibration.svg]
 *
 * Sweeps LazyLLM schedules on stories260K (or --model) and draws the speed/fidelity trade-off:
 * TTFT speedup over dense against first-token agreement and against the perplexity change, one point
 * per schedule, the default marked. Each schedule is measured with scripts/quality/fidelity.ts (the
 * same code as `npm run eval`: lazy and dense side by side on the same prompt windows).
 * Progress on stderr; a markdown table (or with --json one JSON object) on stdout.
 *
 * npm run calibrate -- --plot SWEEP.json,... --out FILE.svg   (the frontier of saved task sweeps)
 *
 * npm run calibrate -- --model DIR --tasks passkey,mdqa [--tokens 1024] [--prompts N] [--schedules ...]
 * sweeps schedules on the generated long-context tasks instead (scripts/quality/tasks.ts): dense answers
 * each prompt once; each schedule then answers it and is timed against a dense prefill run right
 * after it; the plot is TTFT speedup against the change in task accuracy (the speed-accuracy
 * frontier, the paper's signal against the query-aware ones); the table adds the FLOPs ratio and
 * the KL of the first next-token distribution. Schedules take the signal items of the policy
 * (signal:last|query|window:K, heads:mean|max, pool:K): chat prompts rank by their question.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  defaultSchedule,
  formatSchedule,
  parseSchedule,
  validateSchedule,
  type Schedule,
} from '../../src/engine/policy.js';
import { evaluateCase, summarize, type Summary } from './fidelity.js';
import { DEFAULT_DATA, fail, loadModelFromDir, progress, REPO_ROOT, runMain } from '../lib/node-env.js';
import { promptWindows, storyStream } from '../lib/prompts.js';
import { ensureDefaultShards } from '../lib/shard-tasks.js';
import { PALETTE, renderPanels } from '../lib/svg-plot.js';
import { klDivergence, median } from '../lib/stats.js';
import { chatPrompt, promptTokens, runMode, type ModeRun } from './task-eval.js';
import { DEFAULT_FILLER, generateTasks, scoreReply, TASKS, type TaskName } from './tasks.js';

/** A grid around the default: one pruning layer, two, three; gentle to aggressive. */
export function scheduleGrid(nLayers: number): Schedule[] {
  const L = nLayers;
  const mid = Math.max(2, Math.round(L / 2));
  const late = Math.max(2, Math.round((2 * L) / 3));
  const specs = new Set<string>();
  for (const k of [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]) specs.add(`bos,1:${k}`);
  for (const [a, b] of [
    [0.3, 0.5],
    [0.4, 0.5],
    [0.5, 0.5],
    [0.5, 0.8],
    [0.6, 0.6],
    [0.7, 0.7],
    [0.8, 0.8],
  ])
    specs.add(`bos,1:${a},${late}:${b}`);
  specs.add(`bos,${mid}:0.5`);
  specs.add(`bos,${late}:0.5`);
  specs.add(`bos,${mid}:0.3`);
  if (mid < late) specs.add(`bos,1:0.6,${mid}:0.7,${late}:0.7`);
  specs.add(`1:0.5,${late}:0.5`); // without keeping BOS
  specs.add(formatSchedule(defaultSchedule(L)));
  return [...specs].map((s) => validateSchedule(parseSchedule(s), L));
}

interface Point {
  schedule: string;
  isDefault: boolean;
  summary: Summary;
}

function svg(points: Point[], tokens: number, caption: string): string {
  const color = (p: Point) => (p.isDefault ? PALETTE[1] : PALETTE[0]);
  const series = (y: (s: Summary) => number) => [
    {
      name: 'schedules',
      color: PALETTE[0],
      scatter: true,
      points: points.filter((p) => !p.isDefault).map((p) => [p.summary.ttft_speedup, y(p.summary)] as [number, number]),
      labels: points.filter((p) => !p.isDefault).map((p) => p.schedule.replace(/^bos,/, '')),
    },
    ...points
      .filter((p) => p.isDefault)
      .map((p) => ({
        name: `default ${p.schedule}`,
        color: color(p),
        scatter: true,
        highlight: true,
        points: [[p.summary.ttft_speedup, y(p.summary)] as [number, number]],
        labels: ['default'],
      })),
  ];
  return renderPanels(
    [
      {
        title: `first-token agreement vs TTFT speedup (${tokens} tokens)`,
        xLabel: 'TTFT speedup over dense (median of per-prompt ratios)',
        yLabel: 'first-token agreement with dense, %',
        series: series((s) => 100 * s.first_token_agreement),
        hLines: [{ y: 97, label: 'target 97%' }],
      },
      {
        title: `perplexity change vs TTFT speedup (${tokens} tokens)`,
        xLabel: 'TTFT speedup over dense (median of per-prompt ratios)',
        yLabel: 'lazy perplexity vs dense, %',
        series: series((s) => 100 * s.ppl_change),
        hLines: [{ y: 2, label: 'target +2%' }],
      },
    ],
    { panelWidth: 560, panelHeight: 400, perRow: 2, caption },
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      data: { type: 'string', default: DEFAULT_DATA },
      tokens: { type: 'string', default: '512' },
      prompts: { type: 'string', default: '16' },
      next: { type: 'string', default: '64' },
      continuation: { type: 'string', default: '32' },
      reps: { type: 'string', default: '3' },
      schedules: { type: 'string' },
      model: { type: 'string' },
      json: { type: 'boolean', default: false },
      out: { type: 'string', default: join(REPO_ROOT, 'docs', 'calibration.svg') },
      tasks: { type: 'string' },
      seed: { type: 'string', default: '1' },
      speed: { type: 'string', default: 'measured' },
      plot: { type: 'string' },
      default: { type: 'string' },
    },
  });
  if (values.plot !== undefined) return plotSweeps(values.plot, values.out!, values.default);
  if (values.tasks !== undefined) return taskSweep(values);
  if (!existsSync(values.data!)) fail(`--data ${values.data}: no such file`);
  const int = (name: string, v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) fail(`--${name} must be a positive integer, got "${v}"`);
    return n;
  };
  const tokens = int('tokens', values.tokens!);
  const prompts = int('prompts', values.prompts!);
  const next = int('next', values.next!);
  const opts = { continuation: int('continuation', values.continuation!), reps: int('reps', values.reps!) };
  const model = await loadModelFromDir(values.model ?? (await ensureDefaultShards(progress)));
  const L = model.config.nLayers;
  const schedules = values.schedules
    ? values.schedules.split(';').map((s) => validateSchedule(parseSchedule(s.trim()), L))
    : scheduleGrid(L);
  const def = formatSchedule(defaultSchedule(L));
  const stories = readFileSync(values.data!, 'utf8')
    .split('\n')
    .filter((l) => l.trim().length > 0);
  if (stories.length === 0) fail(`--data ${values.data} holds no stories (one story a line)`);
  const windows = promptWindows(storyStream(model.tokenizer, stories), tokens, next, prompts, model.tokenizer.bosId);
  progress(
    `${model.manifest.name}: ${schedules.length} schedules x ${prompts} prompts of ${tokens} tokens (default ${def})`,
  );

  // Warm-up (JIT, wasm tier-up): otherwise the first schedule's dense timings are the slowest.
  for (let i = 0; i < 2; i++) await evaluateCase(model, windows[0], schedules[0], { continuation: 2, reps: 2 });
  const t0 = Date.now();
  const points: Point[] = [];
  for (const [i, schedule] of schedules.entries()) {
    const spec = formatSchedule(schedule);
    const results = [];
    for (const w of windows) results.push(await evaluateCase(model, w, schedule, opts));
    const summary = summarize(results, next);
    points.push({ schedule: spec, isDefault: spec === def, summary });
    progress(
      `[${i + 1}/${schedules.length}, ${((Date.now() - t0) / 1000).toFixed(0)} s] ${spec.padEnd(28)} speedup ${summary.ttft_speedup.toFixed(2)}x  ` +
        `agree ${(100 * summary.first_token_agreement).toFixed(1)}%  KL ${summary.mean_kl.toFixed(4)}  ppl ${(100 * summary.ppl_change).toFixed(2)}%`,
    );
  }
  points.sort((a, b) => a.summary.ttft_speedup - b.summary.ttft_speedup);

  const when = new Date().toISOString().slice(0, 16).replace('T', ' ');
  mkdirSync(dirname(values.out!), { recursive: true });
  writeFileSync(
    values.out!,
    svg(
      points,
      tokens,
      `npm run calibrate -- --tokens ${tokens} --prompts ${prompts}; ${model.manifest.name}; ${when} UTC`,
    ),
  );
  progress(`wrote ${values.out}`);

  if (values.json) {
    process.stdout.write(
      `${JSON.stringify({ model: model.manifest.name, tokens, prompts, next, default: def, points })}\n`,
    );
    return;
  }
  const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
  const lines = [
    '| schedule | TTFT speedup | first-token agreement | mean KL | ppl change | continuation agreement | prefill FLOPs lazy/dense |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...points.map(
      (p) =>
        `| \`${p.schedule}\`${p.isDefault ? ' (default)' : ''} | ${p.summary.ttft_speedup.toFixed(2)}x | ${pct(p.summary.first_token_agreement)} | ` +
        `${p.summary.mean_kl.toFixed(4)} | ${(100 * p.summary.ppl_change).toFixed(2)}% | ${pct(p.summary.continuation_agreement)} | ${p.summary.prefill_flops_ratio.toFixed(2)} |`,
    ),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

/**
 * Schedules for deep models, signal x schedule: the paper's last-token signal against the question's
 * rows (max over heads, pooled 15), at the old default (one late pruning layer) and at early pruning
 * (docs/QUERY-AWARE.md).
 */
export function deepScheduleGrid(L: number): Schedule[] {
  const at = (f: number) => Math.max(1, Math.round(f * L));
  const q = 'signal:query,heads:max,pool:15';
  const specs = [
    formatSchedule(defaultSchedule(L, 'question')),
    `bos,min:128,${at(2 / 3)}:0.5`,
    `bos,min:128,${at(0.27)}:0.3`,
    `bos,min:128,${q},${at(2 / 3)}:0.5`,
    `bos,min:128,${q},${at(0.27)}:0.4`,
    `bos,min:128,${q},${at(0.27)}:0.3`,
    `bos,min:128,${q},${at(0.27)}:0.2,${at(0.53)}:0.5,${at(2 / 3)}:0.5`,
    `bos,min:128,signal:window:16,heads:max,pool:15,${at(0.27)}:0.3`,
  ];
  return [...new Set(specs)].map((s) => validateSchedule(parseSchedule(s), L));
}

/** One schedule's figures on a task sweep. */
export interface TaskPoint {
  schedule: string;
  isDefault: boolean;
  accuracy_dense: number;
  accuracy_lazy: number;
  /** prompts dense answered that this schedule did not */
  lost: number;
  /** prompts this schedule answered that dense did not */
  gained: number;
  mean_kl: number;
  /** median of per-prompt dense/lazy prefill times, each pair run back to back */
  ttft_speedup: number;
  prefill_flops_ratio: number;
}

/**
 * Every prompt answered densely and then by each schedule, back to back, so that each speed ratio
 * compares runs made seconds apart on the same machine state (the order of the schedules rotates
 * from prompt to prompt). Progress per prompt on stderr; with --json one JSON object on stdout.
 */
async function taskSweep(values: Record<string, string | boolean | undefined>): Promise<void> {
  if (!values.model) fail('--tasks needs --model DIR');
  const names = String(values.tasks)
    .split(',')
    .map((t) => t.trim());
  for (const t of names)
    if (!(TASKS as readonly string[]).includes(t)) fail(`--tasks "${t}" is not one of ${TASKS.join(', ')}`);
  const tokens = Number(values.tokens);
  const prompts = Number(values.prompts === '16' ? 3 : values.prompts);
  if (!Number.isInteger(tokens) || tokens < 64 || !Number.isInteger(prompts) || prompts < 1)
    fail('--tokens and --prompts must be positive integers');
  if (values.speed !== 'measured')
    fail(
      `--speed: task sweeps time every run side by side with dense (the FLOPs ratio comes with it); got "${values.speed}"`,
    );
  const model = await loadModelFromDir(String(values.model), { contextTokens: tokens + 64 });
  const L = model.config.nLayers;
  const schedules = values.schedules
    ? String(values.schedules)
        .split(';')
        .map((s) => validateSchedule(parseSchedule(s.trim()), L))
    : deepScheduleGrid(L);
  const def = formatSchedule(defaultSchedule(L, 'question'));
  const filler = DEFAULT_FILLER.map((f) => readFileSync(f, 'utf8')).join('\n');
  const cases = names.flatMap((task) =>
    generateTasks({
      task: task as TaskName,
      tokens,
      count: prompts,
      seed: Number(values.seed),
      filler,
      countTokens: (m) => promptTokens(model, m).length,
    }),
  );
  progress(
    `${model.manifest.name}: ${schedules.length} schedules x ${cases.length} task prompts of about ${tokens} tokens (default ${def})`,
  );
  await runMode(model, promptTokens(model, cases[0].messages).slice(0, 256), null, 2); // warm-up
  const specs = schedules.map((s) => formatSchedule(s));
  const runs = new Map<string, { ok: boolean; kl: number; ratio: number; flops: number }[]>(specs.map((s) => [s, []]));
  const denseOk: boolean[] = [];
  const t0 = Date.now();
  for (const [k, c] of cases.entries()) {
    const { prompt, question } = chatPrompt(model, c.messages);
    const dense = await runMode(model, prompt, null, c.max_tokens ?? 16);
    denseOk.push(scoreReply(dense.text, c.answer));
    const line: string[] = [];
    for (let j = 0; j < schedules.length; j++) {
      const i = (j + k) % schedules.length;
      const r = await runMode(model, prompt, schedules[i], c.max_tokens ?? 16, question);
      const ok = scoreReply(r.text, c.answer);
      runs.get(specs[i])!.push({
        ok,
        kl: klDivergence(dense.firstLogits, r.firstLogits),
        ratio: dense.prefill_ms / r.prefill_ms,
        flops: r.prefill_flops_ratio,
      });
      line[i] = `${ok ? '+' : '-'}${(dense.prefill_ms / r.prefill_ms).toFixed(1)}x`;
    }
    progress(
      `[${k + 1}/${cases.length}, ${((Date.now() - t0) / 1000).toFixed(0)} s] ${c.id} (${prompt.length} tokens): dense ${denseOk[k] ? '+' : '-'} ${(dense.prefill_ms / 1000).toFixed(1)} s | ${line.join(' ')}`,
    );
  }
  const accDense = denseOk.filter(Boolean).length / cases.length;
  const points: TaskPoint[] = specs.map((spec) => {
    const rs = runs.get(spec)!;
    return {
      schedule: spec,
      isDefault: spec === def,
      accuracy_dense: accDense,
      accuracy_lazy: rs.filter((r) => r.ok).length / rs.length,
      lost: rs.filter((r, k) => denseOk[k] && !r.ok).length,
      gained: rs.filter((r, k) => !denseOk[k] && r.ok).length,
      mean_kl: rs.reduce((s, r) => s + r.kl, 0) / rs.length,
      ttft_speedup: median(rs.map((r) => r.ratio)),
      prefill_flops_ratio: rs.reduce((s, r) => s + r.flops, 0) / rs.length,
    };
  });
  points.sort((a, b) => a.ttft_speedup - b.ttft_speedup);
  const caption = `npm run calibrate -- --model ${values.model} --tasks ${values.tasks} --tokens ${tokens} --prompts ${prompts}; ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC; load ${loadavg()[0].toFixed(2)}`;
  const out = String(values.out).endsWith('calibration.svg')
    ? String(values.out).replace(/calibration\.svg$/, `calibration-${model.manifest.name}-${tokens}.svg`)
    : String(values.out);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, frontierSvg([{ tokens, points }], caption));
  progress(`wrote ${out}`);
  if (values.json) {
    process.stdout.write(
      `${JSON.stringify({ model: model.manifest.name, tokens, cases: cases.length, default: def, accuracy_dense: accDense, load: loadavg(), caption, points })}\n`,
    );
    return;
  }
  process.stdout.write(`${taskTable(accDense, cases.length, points)}\n`);
}

/**
 * `--plot A.json,B.json --out FILE.svg`: one frontier plot, a panel per length, from task sweeps
 * saved with --json (a sweep per length can take an hour; the plot should not need them run again).
 */
function plotSweeps(files: string, out: string, def?: string): void {
  const sweeps = files.split(',').map((f) => {
    let sweep: { tokens: number; points: TaskPoint[]; cases: number; load: number[] };
    try {
      sweep = JSON.parse(readFileSync(f.trim(), 'utf8'));
    } catch (e) {
      fail(`--plot ${f}: not a task sweep's --json output (${(e as Error).message})`);
    }
    // --default SPEC marks that schedule (a sweep marks the default of its own day).
    return def === undefined
      ? sweep
      : {
          ...sweep,
          points: sweep.points.map((p) => ({ ...p, isDefault: p.schedule === formatSchedule(parseSchedule(def)) })),
        };
  });
  mkdirSync(dirname(out), { recursive: true });
  const caption = `npm run calibrate -- --tasks ${TASKS.join(',')} --prompts 4, then --plot; ${sweeps.map((s) => `${s.tokens} tokens: ${s.cases} prompts, load ${s.load.map((l) => l.toFixed(1)).join('/')}`).join('; ')}`;
  writeFileSync(out, frontierSvg(sweeps, caption));
  progress(`wrote ${out}`);
}

/** The markdown table of a task sweep. */
export function taskTable(accDense: number, n: number, points: TaskPoint[]): string {
  return [
    `| schedule | TTFT speedup | prefill FLOPs lazy/dense | accuracy lazy (dense ${(100 * accDense).toFixed(0)}% of ${n}) | lost / gained vs dense | first-token KL |`,
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    ...points.map(
      (p) =>
        `| \`${p.schedule}\`${p.isDefault ? ' (default)' : ''} | ${p.ttft_speedup.toFixed(2)}x | ${p.prefill_flops_ratio.toFixed(2)} | ${(100 * p.accuracy_lazy).toFixed(0)}% | ${p.lost} / ${p.gained} | ${p.mean_kl.toFixed(4)} |`,
    ),
  ].join('\n');
}

/** The speed-accuracy frontier: accuracy change against TTFT speedup, the paper's signal against the query-aware ones, one panel per length. */
export function frontierSvg(sweeps: { tokens: number; points: TaskPoint[] }[], caption: string): string {
  const label = (p: TaskPoint) =>
    p.schedule.replace(/^bos,min:128,/, '').replace('signal:query,heads:max,pool:15,', 'query,');
  const kindOf = (p: TaskPoint) =>
    p.schedule.includes('signal:query') ? 'query' : p.schedule.includes('signal:window') ? 'window' : 'last';
  const kinds = [
    { kind: 'last', name: "signal:last (the paper's)", color: PALETTE[0] },
    { kind: 'query', name: 'signal:query, heads:max, pool:15', color: PALETTE[1] },
    { kind: 'window', name: 'signal:window:16, heads:max, pool:15', color: PALETTE[2] },
  ];
  return renderPanels(
    sweeps.map(({ tokens, points }) => ({
      title: `task accuracy change vs TTFT speedup (${tokens} tokens)`,
      xLabel: 'TTFT speedup over dense (median of per-prompt ratios, side by side)',
      yLabel: 'lazy accuracy - dense accuracy, points',
      series: [
        ...kinds.map((k) => {
          const ps = points.filter((p) => kindOf(p) === k.kind && !p.isDefault);
          return {
            name: k.name,
            color: k.color,
            scatter: true,
            points: ps.map((p) => [p.ttft_speedup, 100 * (p.accuracy_lazy - p.accuracy_dense)] as [number, number]),
            labels: ps.map(label),
          };
        }),
        ...points
          .filter((p) => p.isDefault)
          .map((p) => ({
            name: `default ${label(p)}`,
            color: PALETTE[1],
            scatter: true,
            highlight: true,
            points: [[p.ttft_speedup, 100 * (p.accuracy_lazy - p.accuracy_dense)] as [number, number]],
            labels: ['default'],
          })),
      ],
      hLines: [{ y: (-100 * 1) / 24, label: '1 task in 24' }],
    })),
    { panelWidth: 560, panelHeight: 420, perRow: 2, caption },
  );
}

runMain(main);

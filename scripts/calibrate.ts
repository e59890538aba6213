/**
 * npm run calibrate -- --data FILE [--tokens 512] [--prompts N] [--next N] [--reps N]
 *                      [--schedules "SPEC;SPEC;..."] [--model DIR] [--json] [--out docs/calibration.svg]
 *
 * Sweeps LazyLLM schedules on stories260K (or --model) and draws the speed/fidelity trade-off:
 * TTFT speedup over dense against first-token agreement and against the perplexity change, one point
 * per schedule, the default marked. Each schedule is measured with scripts/lib/fidelity.ts (the
 * same code as `npm run eval`: lazy and dense side by side on the same prompt windows).
 * Progress on stderr; a markdown table (or with --json one JSON object) on stdout.
 *
 * npm run calibrate -- --model DIR --tasks passkey,mdqa [--tokens 1024] [--prompts N] [--schedules ...]
 * sweeps schedules on the generated long-context tasks instead (scripts/lib/tasks.ts): dense answers
 * each prompt once; each schedule then answers it and is timed against a dense prefill run right
 * after it; the plot is TTFT speedup against the change in task accuracy and against the KL of the
 * first next-token distribution. `--speed flops` skips those timed dense prefills and plots dense/lazy
 * prefill FLOPs instead (deterministic; measured TTFT speedups on SmolLM2 track it within a few percent),
 * for sweeps on a machine too busy to time them.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { defaultSchedule, formatSchedule, parseSchedule, validateSchedule, type Schedule } from '../src/engine/policy.js';
import { evaluateCase, summarize, type Summary } from './lib/fidelity.js';
import { DEFAULT_DATA, fail, loadModelFromDir, progress, REPO_ROOT, runMain } from './lib/node-env.js';
import { promptWindows, storyStream } from './lib/prompts.js';
import { ensureDefaultShards } from './lib/shard-tasks.js';
import { PALETTE, renderPanels } from './lib/svg-plot.js';
import { klDivergence, median } from './lib/fidelity.js';
import { chatPrompt, promptTokens, runMode, type ModeRun } from './lib/task-eval.js';
import { SequenceState } from '../src/engine/caches.js';
import { runStep } from '../src/engine/step.js';
import { DEFAULT_FILLER, generateTasks, scoreReply, TASKS, type TaskName } from './lib/tasks.js';

/** A grid around the default: one pruning layer, two, three; gentle to aggressive. */
export function scheduleGrid(nLayers: number): Schedule[] {
  const L = nLayers;
  const mid = Math.max(2, Math.round(L / 2));
  const late = Math.max(2, Math.round((2 * L) / 3));
  const specs = new Set<string>();
  for (const k of [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]) specs.add(`bos,1:${k}`);
  for (const [a, b] of [[0.3, 0.5], [0.4, 0.5], [0.5, 0.5], [0.5, 0.8], [0.6, 0.6], [0.7, 0.7], [0.8, 0.8]]) specs.add(`bos,1:${a},${late}:${b}`);
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
      .map((p) => ({ name: `default ${p.schedule}`, color: color(p), scatter: true, highlight: true, points: [[p.summary.ttft_speedup, y(p.summary)] as [number, number]], labels: ['default'] })),
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
    },
  });
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
  const stories = readFileSync(values.data!, 'utf8').split('\n').filter((l) => l.trim().length > 0);
  if (stories.length === 0) fail(`--data ${values.data} holds no stories (one story a line)`);
  const windows = promptWindows(storyStream(model.tokenizer, stories), tokens, next, prompts, model.tokenizer.bosId);
  progress(`${model.manifest.name}: ${schedules.length} schedules x ${prompts} prompts of ${tokens} tokens (default ${def})`);

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
  writeFileSync(values.out!, svg(points, tokens, `npm run calibrate -- --tokens ${tokens} --prompts ${prompts}; ${model.manifest.name}; ${when} UTC`));
  progress(`wrote ${values.out}`);

  if (values.json) {
    process.stdout.write(`${JSON.stringify({ model: model.manifest.name, tokens, prompts, next, default: def, points })}\n`);
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

/** Schedules for deep models: where pruning starts matters more than how hard (docs: README, LazyLLM on SmolLM2). */
export function deepScheduleGrid(L: number): Schedule[] {
  const at = (f: number) => Math.max(1, Math.round(f * L));
  const specs = [
    formatSchedule(defaultSchedule(L)),
    `bos,min:128,1:0.55,${at(1 / 3)}:0.6,${at(2 / 3)}:0.6`,
    `bos,min:128,${at(0.2)}:0.7,${at(0.5)}:0.6,${at(0.8)}:0.5`,
    `bos,min:128,${at(1 / 3)}:0.5,${at(2 / 3)}:0.5`,
    `bos,min:128,${at(1 / 3)}:0.7,${at(2 / 3)}:0.5`,
    `bos,min:128,${at(0.5)}:0.4,${at(0.8)}:0.5`,
    `bos,min:128,${at(0.1)}:0.8,${at(1 / 3)}:0.6,${at(2 / 3)}:0.5`,
  ];
  return [...new Set(specs)].map((s) => validateSchedule(parseSchedule(s), L));
}

interface TaskPoint {
  schedule: string;
  isDefault: boolean;
  accuracy_dense: number;
  accuracy_lazy: number;
  mean_kl: number;
  /** median of per-prompt dense/lazy prefill times; null with --speed flops */
  ttft_speedup: number | null;
  prefill_flops_ratio: number;
}

async function taskSweep(values: Record<string, string | boolean | undefined>): Promise<void> {
  if (!values.model) fail('--tasks needs --model DIR');
  const names = String(values.tasks).split(',').map((t) => t.trim());
  for (const t of names) if (!(TASKS as readonly string[]).includes(t)) fail(`--tasks "${t}" is not one of ${TASKS.join(', ')}`);
  const tokens = Number(values.tokens);
  const prompts = Number(values.prompts === '16' ? 3 : values.prompts);
  if (!Number.isInteger(tokens) || tokens < 64 || !Number.isInteger(prompts) || prompts < 1) fail('--tokens and --prompts must be positive integers');
  if (values.speed !== 'measured' && values.speed !== 'flops') fail(`--speed must be "measured" or "flops", got "${values.speed}"`);
  const timed = values.speed === 'measured';
  const model = await loadModelFromDir(String(values.model), { contextTokens: tokens + 64 });
  const L = model.config.nLayers;
  const schedules = values.schedules ? String(values.schedules).split(';').map((s) => validateSchedule(parseSchedule(s.trim()), L)) : deepScheduleGrid(L);
  const def = formatSchedule(defaultSchedule(L));
  const filler = DEFAULT_FILLER.map((f) => readFileSync(f, 'utf8')).join('\n');
  const cases = names.flatMap((task) =>
    generateTasks({ task: task as TaskName, tokens, count: prompts, seed: Number(values.seed), filler, countTokens: (m) => promptTokens(model, m).length }),
  );
  progress(`${model.manifest.name}: ${schedules.length} schedules x ${cases.length} task prompts of about ${tokens} tokens (default ${def})`);
  await runMode(model, promptTokens(model, cases[0].messages).slice(0, 256), null, 2); // warm-up
  const dense: ModeRun[] = [];
  for (const c of cases) dense.push(await runMode(model, promptTokens(model, c.messages), null, c.max_tokens ?? 16));
  const accDense = cases.filter((c, i) => scoreReply(dense[i].text, c.answer)).length / cases.length;
  progress(`dense: accuracy ${(100 * accDense).toFixed(0)}%, TTFT median ${(median(dense.map((d) => d.prefill_ms)) / 1000).toFixed(2)} s`);
  const points: TaskPoint[] = [];
  for (const [i, schedule] of schedules.entries()) {
    const spec = formatSchedule(schedule);
    const runs: ModeRun[] = [];
    const ratios: number[] = [];
    for (const c of cases) {
      const { prompt, question } = chatPrompt(model, c.messages);
      const r = await runMode(model, prompt, schedule, c.max_tokens ?? 16, question);
      runs.push(r);
      if (!timed) continue;
      // A dense prefill right after, so each speed ratio compares runs made seconds apart.
      const t = performance.now();
      await runStep(model, new SequenceState(model.config), prompt, { schedule: null });
      ratios.push((performance.now() - t) / r.prefill_ms);
    }
    const p: TaskPoint = {
      schedule: spec,
      isDefault: spec === def,
      accuracy_dense: accDense,
      accuracy_lazy: cases.filter((c, k) => scoreReply(runs[k].text, c.answer)).length / cases.length,
      mean_kl: runs.reduce((s, r, k) => s + klDivergence(dense[k].firstLogits, r.firstLogits), 0) / runs.length,
      ttft_speedup: timed ? median(ratios) : null,
      prefill_flops_ratio: runs.reduce((s, r) => s + r.prefill_flops_ratio, 0) / runs.length,
    };
    points.push(p);
    progress(`[${i + 1}/${schedules.length}] ${spec.padEnd(40)} speedup ${p.ttft_speedup === null ? '-' : `${p.ttft_speedup.toFixed(2)}x`} (FLOPs ${p.prefill_flops_ratio.toFixed(2)})  accuracy ${(100 * p.accuracy_lazy).toFixed(0)}% (dense ${(100 * accDense).toFixed(0)}%)  KL ${p.mean_kl.toFixed(4)}`);
  }
  const x = (p: TaskPoint) => (timed ? p.ttft_speedup! : 1 / p.prefill_flops_ratio);
  const xLabel = timed ? 'TTFT speedup over dense (median of per-prompt ratios)' : 'dense / lazy prefill FLOPs (what TTFT speedup tracks)';
  const xName = timed ? 'TTFT speedup' : 'FLOPs speedup';
  points.sort((a, b) => x(a) - x(b));
  const series = (y: (p: TaskPoint) => number) => [
    { name: 'schedules', color: PALETTE[0], scatter: true, points: points.filter((p) => !p.isDefault).map((p) => [x(p), y(p)] as [number, number]), labels: points.filter((p) => !p.isDefault).map((p) => p.schedule.replace(/^bos,min:128,/, '')) },
    ...points.filter((p) => p.isDefault).map((p) => ({ name: `default ${p.schedule}`, color: PALETTE[1], scatter: true, highlight: true, points: [[x(p), y(p)] as [number, number]], labels: ['default'] })),
  ];
  const when = new Date().toISOString().slice(0, 16).replace('T', ' ');
  const out = String(values.out).endsWith('calibration.svg') ? String(values.out).replace(/calibration\.svg$/, `calibration-${model.manifest.name}.svg`) : String(values.out);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(
    out,
    renderPanels(
      [
        { title: `task accuracy change vs ${xName} (${tokens} tokens)`, xLabel, yLabel: 'lazy accuracy - dense accuracy, points', series: series((p) => 100 * (p.accuracy_lazy - p.accuracy_dense)), hLines: [{ y: -1, label: 'target -1 point' }] },
        { title: `first-token KL vs ${xName} (${tokens} tokens)`, xLabel, yLabel: 'mean KL(dense || lazy) of the first token', series: series((p) => p.mean_kl), hLines: [{ y: 0.02, label: 'target 0.02' }] },
      ],
      { panelWidth: 560, panelHeight: 400, perRow: 2, caption: `npm run calibrate -- --model ${values.model} --tasks ${values.tasks} --tokens ${tokens} --prompts ${prompts}${timed ? '' : ' --speed flops'}; ${when} UTC` },
    ),
  );
  progress(`wrote ${out}`);
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ model: model.manifest.name, tokens, cases: cases.length, default: def, accuracy_dense: accDense, points })}\n`);
    return;
  }
  process.stdout.write(
    [
      `| schedule | TTFT speedup | prefill FLOPs lazy/dense | accuracy lazy (dense ${(100 * accDense).toFixed(0)}%) | first-token KL |`,
      '| --- | ---: | ---: | ---: | ---: |',
      ...points.map((p) => `| \`${p.schedule}\`${p.isDefault ? ' (default)' : ''} | ${p.ttft_speedup === null ? '-' : `${p.ttft_speedup.toFixed(2)}x`} | ${p.prefill_flops_ratio.toFixed(2)} | ${(100 * p.accuracy_lazy).toFixed(0)}% | ${p.mean_kl.toFixed(4)} |`),
      '',
    ].join('\n'),
  );
}

runMain(main);

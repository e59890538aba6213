/**
 * npm run calibrate -- --data FILE [--tokens 512] [--prompts N] [--next N] [--reps N]
 *                      [--schedules "SPEC;SPEC;..."] [--model DIR] [--json] [--out docs/calibration.svg]
 *
 * Sweeps LazyLLM schedules on stories260K (or --model) and draws the speed/fidelity trade-off:
 * TTFT speedup over dense against first-token agreement and against the perplexity change, one point
 * per schedule, the default marked. Each schedule is measured with scripts/lib/fidelity.ts (the
 * same code as `npm run eval`: lazy and dense side by side on the same prompt windows).
 * Progress on stderr; a markdown table (or with --json one JSON object) on stdout.
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
    },
  });
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

runMain(main);

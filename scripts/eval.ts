/**
 * npm run eval -- --data FILE [--tokens 512,1024] [--schedule SPEC] [--prompts N] [--next N]
 *                 [--reps N] [--model DIR] [--json]
 * Compares lazy with dense on multi-story prompts built from FILE (one story a line, BOS before each).
 */
import { existsSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { defaultSchedule, formatSchedule, parseSchedule, validateSchedule } from '../src/engine/policy.js';
import { evaluateCase, summarize, type CaseResult, type Summary } from './lib/fidelity.js';
import { DEFAULT_DATA, fail, loadModelFromDir, progress, runMain } from './lib/node-env.js';
import { promptWindows, storyStream } from './lib/prompts.js';
import { ensureDefaultShards } from './lib/shard-tasks.js';

function positiveInt(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) fail(`--${name} must be a positive integer, got "${v}"`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      data: { type: 'string', default: DEFAULT_DATA },
      tokens: { type: 'string', default: '512,1024' },
      schedule: { type: 'string' },
      prompts: { type: 'string', default: '16' },
      next: { type: 'string', default: '64' },
      continuation: { type: 'string', default: '32' },
      reps: { type: 'string', default: '3' },
      model: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  if (!existsSync(values.data)) fail(`--data ${values.data}: no such file`);
  const lengths = values.tokens.split(',').map((t) => positiveInt('tokens', t.trim()));
  const prompts = positiveInt('prompts', values.prompts);
  const nextTokens = positiveInt('next', values.next);
  const opts = { continuation: positiveInt('continuation', values.continuation), reps: positiveInt('reps', values.reps) };
  const model = await loadModelFromDir(values.model ?? (await ensureDefaultShards(progress)));
  const cfg = model.config;
  const schedule = validateSchedule(values.schedule ? parseSchedule(values.schedule) : defaultSchedule(cfg.nLayers), cfg.nLayers);
  const stories = readFileSync(values.data, 'utf8').split('\n').filter((l) => l.trim().length > 0);
  if (stories.length === 0) fail(`--data ${values.data} holds no stories (one story a line)`);
  const stream = storyStream(model.tokenizer, stories);
  progress(`${model.manifest.name}: schedule ${formatSchedule(schedule)}, ${stream.length} tokens of text, ${prompts} prompts per length`);

  const summary: Record<string, Summary> = {};
  const cases: Record<string, CaseResult[]> = {};
  for (const len of lengths) {
    const windows = promptWindows(stream, len, nextTokens, prompts, model.tokenizer.bosId);
    const results: CaseResult[] = [];
    for (const [k, w] of windows.entries()) {
      results.push(await evaluateCase(model, w, schedule, opts));
      const r = results.at(-1)!;
      progress(`  ${len} tokens [${k + 1}/${windows.length}] agree=${r.first_token_agree} kl=${r.kl.toFixed(4)} ttft ${r.ttft_dense_ms.toFixed(1)} -> ${r.ttft_lazy_ms.toFixed(1)} ms`);
    }
    cases[len] = results;
    summary[len] = summarize(results, nextTokens);
  }
  const note = lengths.some((l) => l > cfg.seqLen) ? `lengths above ${cfg.seqLen} are beyond the trained context` : undefined;
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ model: model.manifest.name, schedule: formatSchedule(schedule), trained_context: cfg.seqLen, note, summary, cases })}\n`);
    return;
  }
  const rows = Object.entries(summary).map(([len, s]) =>
    `| ${len}${Number(len) > cfg.seqLen ? ' (beyond trained context)' : ''} | ${s.prompts} | ${(100 * s.first_token_agreement).toFixed(1)}% | ${s.mean_kl.toFixed(4)} | ${s.ppl_dense.toFixed(3)} | ${s.ppl_lazy.toFixed(3)} (${(100 * s.ppl_change).toFixed(2)}%) | ${(100 * s.continuation_agreement).toFixed(1)}% | ${s.ttft_dense_ms.toFixed(1)} / ${s.ttft_lazy_ms.toFixed(1)} ms | ${s.ttft_speedup.toFixed(2)}x | ${s.prefill_flops_ratio.toFixed(2)} |`,
  );
  process.stdout.write(
    [
      `model ${model.manifest.name}, schedule ${formatSchedule(schedule)}`,
      '',
      '| prompt tokens | prompts | first-token agreement | mean KL | ppl dense | ppl lazy | greedy continuation agreement | TTFT dense / lazy | TTFT speedup | prefill FLOPs lazy/dense |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
      ...rows,
      '',
    ].join('\n'),
  );
}

runMain(main);

/**
 * npm run eval -- --data FILE [--tokens 512,1024] [--schedule SPEC] [--prompts N] [--next N] [--continuation N (0: none)]
 *                 [--reps N] [--model DIR] [--json]
 * npm run eval -- --model DIR --tasks passkey,passkey-distractors,mdqa [--tokens 1024,2048,4096]
 *                 [--prompts N] [--seed S] [--filler FILE,...] [--schedule SPEC] [--json]
 * npm run eval -- --model DIR --tasks-file F.jsonl [--schedule SPEC] [--json]
 * Compares lazy with dense: on natural text (windows of FILE; for a model trained with BOS, one
 * story a line with BOS before each; fidelity of the next-token distribution), or on long-context tasks, generated
 * (scripts/quality/tasks.ts) or read from a file (one {"id", "task", "messages", "answer"} a line),
 * scored by whether the greedy reply contains the answer.
 */
import { existsSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { defaultSchedule, formatSchedule, parseSchedule, validateSchedule } from '../../src/engine/policy.js';
import { evaluateCase, summarize, type CaseResult, type Summary } from './fidelity.js';
import { DEFAULT_DATA, fail, loadModelFromDir, progress, runMain } from '../lib/node-env.js';
import { evalStream, promptWindows } from '../lib/prompts.js';
import { ensureDefaultShards } from '../lib/shard-tasks.js';
import { promptTokens, runTaskCase, summarizeTasks, type TaskResult } from './task-eval.js';
import {
  DEFAULT_FILLER,
  generateTasks,
  parseTasksFile,
  TASKS,
  type ChatTurn,
  type TaskCase,
  type TaskName,
} from './tasks.js';

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
      tasks: { type: 'string' },
      'tasks-file': { type: 'string' },
      seed: { type: 'string', default: '1' },
      filler: { type: 'string', default: DEFAULT_FILLER.join(',') },
    },
  });
  if (values.tasks !== undefined || values['tasks-file'] !== undefined) return taskMain(values);
  if (!existsSync(values.data)) fail(`--data ${values.data}: no such file`);
  const lengths = values.tokens.split(',').map((t) => positiveInt('tokens', t.trim()));
  const prompts = positiveInt('prompts', values.prompts);
  const nextTokens = positiveInt('next', values.next);
  const continuation = values.continuation === '0' ? 0 : positiveInt('continuation', values.continuation); // 0: no greedy continuation (saves two prefills a prompt)
  const opts = { continuation, reps: positiveInt('reps', values.reps) };
  const model = await loadModelFromDir(values.model ?? (await ensureDefaultShards(progress)), {
    contextTokens: Math.max(...lengths) + nextTokens + 64,
  });
  const cfg = model.config;
  const schedule = validateSchedule(
    values.schedule ? parseSchedule(values.schedule) : defaultSchedule(cfg.nLayers, 'text'),
    cfg.nLayers,
  );
  const stream = evalStream(model.tokenizer, readFileSync(values.data, 'utf8'));
  if (stream.length < 2) fail(`--data ${values.data} holds no text`);
  progress(
    `${model.manifest.name}: schedule ${formatSchedule(schedule)}, ${stream.length} tokens of text, ${prompts} prompts per length`,
  );

  const summary: Record<string, Summary> = {};
  const cases: Record<string, CaseResult[]> = {};
  for (const len of lengths) {
    const windows = promptWindows(
      stream,
      len,
      nextTokens,
      prompts,
      model.tokenizer.addBos ? model.tokenizer.bosId : null,
    );
    const results: CaseResult[] = [];
    for (const [k, w] of windows.entries()) {
      results.push(await evaluateCase(model, w, schedule, opts));
      const r = results.at(-1)!;
      progress(
        `  ${len} tokens [${k + 1}/${windows.length}] agree=${r.first_token_agree} kl=${r.kl.toFixed(4)} ttft ${r.ttft_dense_ms.toFixed(1)} -> ${r.ttft_lazy_ms.toFixed(1)} ms`,
      );
    }
    cases[len] = results;
    summary[len] = summarize(results, nextTokens);
  }
  const trained = model.manifest.config.seqLen;
  const note = lengths.some((l) => l > trained) ? `lengths above ${trained} are beyond the trained context` : undefined;
  if (values.json) {
    process.stdout.write(
      `${JSON.stringify({ model: model.manifest.name, schedule: formatSchedule(schedule), trained_context: trained, note, summary, cases })}\n`,
    );
    return;
  }
  const rows = Object.entries(summary).map(
    ([len, s]) =>
      `| ${len}${Number(len) > trained ? ' (beyond trained context)' : ''} | ${s.prompts} | ${(100 * s.first_token_agreement).toFixed(1)}% | ${s.mean_kl.toFixed(4)} | ${s.ppl_dense.toFixed(3)} | ${s.ppl_lazy.toFixed(3)} (${(100 * s.ppl_change).toFixed(2)}%) | ${(100 * s.continuation_agreement).toFixed(1)}% | ${s.ttft_dense_ms.toFixed(1)} / ${s.ttft_lazy_ms.toFixed(1)} ms | ${s.ttft_speedup.toFixed(2)}x | ${s.prefill_flops_ratio.toFixed(2)} |`,
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

async function taskMain(values: {
  tasks?: string;
  'tasks-file'?: string;
  tokens: string;
  prompts: string;
  seed: string;
  filler: string;
  schedule?: string;
  model?: string;
  json: boolean;
}): Promise<void> {
  if (!values.model) fail('--tasks and --tasks-file need --model DIR (for example model-shards/smollm2-135m-instruct)');
  const names = values.tasks?.split(',').map((t) => t.trim()) ?? [];
  for (const t of names)
    if (!(TASKS as readonly string[]).includes(t)) fail(`--tasks "${t}" is not one of ${TASKS.join(', ')}`);
  const lengths = values.tokens.split(',').map((t) => positiveInt('tokens', t.trim()));
  // Long prompts need the context: serve the trained window (the memory budget still applies).
  const model = await loadModelFromDir(values.model, { contextTokens: Math.max(...lengths, 2048) + 64 });
  const cfg = model.config;
  const schedule = validateSchedule(
    values.schedule ? parseSchedule(values.schedule) : defaultSchedule(cfg.nLayers, 'question'),
    cfg.nLayers,
  );
  const cases: TaskCase[] = [];
  if (values['tasks-file']) {
    const f = values['tasks-file'];
    if (!existsSync(f)) fail(`--tasks-file ${f}: no such file`);
    cases.push(...parseTasksFile(readFileSync(f, 'utf8'), f));
  }
  const files = values.filler.split(',');
  for (const f of files) if (!existsSync(f)) fail(`--filler ${f}: no such file`);
  const filler = files.map((f) => readFileSync(f, 'utf8')).join('\n');
  const countTokens = (m: ChatTurn[]) => promptTokens(model, m).length;
  for (const task of names) {
    for (const len of lengths) {
      if (len + 16 > cfg.seqLen) fail(`--tokens ${len} does not fit the context of ${cfg.seqLen} tokens`);
      cases.push(
        ...generateTasks({
          task: task as TaskName,
          tokens: len,
          count: positiveInt('prompts', values.prompts),
          seed: positiveInt('seed', values.seed),
          filler,
          countTokens,
        }),
      );
    }
  }
  if (cases.length === 0) fail('no task cases');
  progress(`${model.manifest.name}: schedule ${formatSchedule(schedule)}, ${cases.length} task prompts`);
  const results: TaskResult[] = [];
  for (const [k, c] of cases.entries()) {
    const r = await runTaskCase(model, c, schedule, k);
    results.push(r);
    progress(
      `  [${k + 1}/${cases.length}] ${r.id} (${r.tokens} tokens): dense ${r.correct_dense ? 'ok' : 'MISS'} lazy ${r.correct_lazy ? 'ok' : 'MISS'}, ttft ${r.ttft_dense_ms.toFixed(0)} -> ${r.ttft_lazy_ms.toFixed(0)} ms; lazy said ${JSON.stringify(r.reply_lazy.slice(0, 40))}`,
    );
  }
  const tasks = summarizeTasks(results);
  if (values.json) {
    process.stdout.write(
      `${JSON.stringify({ model: model.manifest.name, schedule: formatSchedule(schedule), tasks, cases: results })}\n`,
    );
    return;
  }
  const pct = (x: number) => `${(100 * x).toFixed(0)}%`;
  const rows = Object.entries(tasks).flatMap(([t, bs]) =>
    Object.entries(bs).map(
      ([b, s]) =>
        `| ${t} | ${b} | ${s.n} | ${pct(s.accuracy_dense)} | ${pct(s.accuracy_lazy)} | ${(s.ttft_dense_ms / 1000).toFixed(2)} / ${(s.ttft_lazy_ms / 1000).toFixed(2)} s | ${s.ttft_speedup.toFixed(2)}x |`,
    ),
  );
  process.stdout.write(
    [
      `model ${model.manifest.name}, schedule ${formatSchedule(schedule)}`,
      '',
      '| task | prompt tokens | n | accuracy dense | accuracy lazy | TTFT dense / lazy | TTFT speedup |',
      '| --- | --- | --- | --- | --- | --- | --- |',
      ...rows,
      '',
    ].join('\n'),
  );
}

runMain(main);

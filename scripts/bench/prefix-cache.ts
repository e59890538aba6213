/**
 * The prefix cache measured as a stateless client uses it: one document (about --tokens tokens of
 * the dev suite's filler prose with --questions facts hidden through it at evenly spread depths, as
 * the passkey tasks hide theirs: the pass key, the door code, ...), asked one question per request,
 * each request resending the whole document. For dense and lazy (the served default schedule, query signal), side by side in one run:
 * each question through the prefix cache (the first fills it, the others reuse the document), and
 * each computed fresh; TTFT, the reply's answer against the fresh request's and against the truth,
 * tokens reused and revived, and the bytes the cache holds.
 *
 *   flock /tmp/lazy-edge-cpu.lock env LAZY_EDGE_MEMORY_BUDGET_MB=off npx tsx scripts/bench/prefix-cache.ts
 *
 * Writes the markdown table to --out (default .bench-cache/prefix-cache.md) and the plot to
 * --svg (default docs/prefix-cache.svg); progress goes to stderr.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { SequenceState } from '../../src/engine/caches.js';
import type { GenerateOptions } from '../../src/engine/generate.js';
import { defaultSchedule, formatSchedule, type Schedule } from '../../src/engine/policy.js';
import { PrefixCache } from '../../src/engine/prefix-cache.js';
import { runTurn, type TurnResult } from '../../src/engine/turns.js';
import { MIN_PREFIX_MATCH, stateRoomBytes } from '../../src/worker/job/prefix-cache.js';
import { loadModelFromDir, progress, REPO_ROOT, runMain, shardsDir } from '../lib/node-env.js';
import { PALETTE, renderPanels } from '../lib/svg-plot.js';
import { scoreReply } from '../quality/tasks.js';
import { makeDoc, promptOf } from './prefix-doc.js';

interface Row {
  mode: 'dense' | 'lazy';
  q: number;
  label: string;
  promptTokens: number;
  cachedTokens: number;
  revived: number;
  revivedLayers: number[];
  ttftCachedMs: number;
  ttftFreshMs: number;
  replyCached: string;
  replyFresh: string;
  rightCached: boolean;
  rightFresh: boolean;
  cacheBytes: number;
}

const sum = (a: number[]) => a.reduce((s, x) => s + x, 0);
const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1];
const mb = (b: number) => (b / 2 ** 20).toFixed(1);

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      model: { type: 'string', default: 'smollm2-135m-instruct' },
      tokens: { type: 'string', default: '2000' },
      questions: { type: 'string', default: '8' },
      'max-tokens': { type: 'string', default: '12' },
      seed: { type: 'string', default: '7' },
      out: { type: 'string', default: resolve(REPO_ROOT, '.bench-cache/prefix-cache.md') },
      svg: { type: 'string', default: resolve(REPO_ROOT, 'docs/prefix-cache.svg') },
    },
  });
  const model = await loadModelFromDir(shardsDir(a.model!));
  const questions = Number(a.questions);
  const maxTokens = Number(a['max-tokens']);
  const doc = makeDoc(model, Number(a.tokens), questions, Number(a.seed));
  const load = execFileSync('uptime').toString().trim();
  progress(`${a.model}: document of ${promptOf(model, doc.text, doc.facts[0].label).prompt.length} tokens; ${load}`);
  const rows: Row[] = [];
  const schedules: [Row['mode'], Schedule | null][] = [
    ['dense', null],
    ['lazy', defaultSchedule(model.config.nLayers, 'question')],
  ];
  const sampler = { temperature: 0, topP: 1, topK: 0, seed: 1 };
  for (const [mode, schedule] of schedules) {
    const room = stateRoomBytes(model);
    const cache = new PrefixCache(model.config, {
      maxBytes: Number.isFinite(room) ? room : 2 ** 40,
      stateRoomBytes: Number.isFinite(room) ? room : 2 ** 40,
      minMatch: MIN_PREFIX_MATCH,
    });
    for (const [q, f] of doc.facts.entries()) {
      const p = promptOf(model, doc.text, f.label);
      const opts: GenerateOptions = { maxTokens, sampler, schedule, question: p.question };
      // Through the cache, as the Worker serves a stateless request (src/worker/http/respond.ts).
      const t0 = performance.now();
      const lease = cache.lease(p.prompt, p.prompt.length + maxTokens);
      const leaseMs = performance.now() - t0;
      let cached: TurnResult;
      try {
        cached = await runTurn(model, lease.seq, p.prompt, opts);
        cache.restore(lease);
      } catch (e) {
        cache.discard(lease);
        throw e;
      }
      const fresh = await runTurn(model, new SequenceState(model.config), p.prompt, opts);
      const row: Row = {
        mode,
        q: q + 1,
        label: f.label,
        promptTokens: p.prompt.length,
        cachedTokens: cached.stats.reused_tokens,
        revived: sum(cached.stats.revived_per_layer),
        revivedLayers: cached.stats.revived_per_layer.flatMap((r, l) => (r > 0 ? [l] : [])),
        ttftCachedMs: leaseMs + cached.result.stats.prefill_ms,
        ttftFreshMs: fresh.result.stats.prefill_ms,
        replyCached: cached.result.text.trim(),
        replyFresh: fresh.result.text.trim(),
        rightCached: scoreReply(cached.result.text, f.key),
        rightFresh: scoreReply(fresh.result.text, f.key),
        cacheBytes: cache.figures().bytes,
      };
      rows.push(row);
      progress(
        `${mode} q${row.q} (${f.label}): TTFT ${row.ttftCachedMs.toFixed(0)} ms cached (${row.cachedTokens} reused, ` +
          `${row.revived} revived) vs ${row.ttftFreshMs.toFixed(0)} ms fresh; ${row.rightCached ? 'right' : 'WRONG'}` +
          `/${row.rightFresh ? 'right' : 'WRONG'}; cache ${mb(row.cacheBytes)} MiB`,
      );
    }
  }
  const after = execFileSync('uptime').toString().trim();
  const when = new Date().toISOString().slice(0, 16).replace('T', ' ');
  const command = `flock /tmp/lazy-edge-cpu.lock env LAZY_EDGE_MEMORY_BUDGET_MB=off npx tsx scripts/bench/prefix-cache.ts --model ${a.model} --tokens ${a.tokens} --questions ${questions} --max-tokens ${maxTokens}`;
  const lines = [
    `${a.model}, document of ${rows[0].promptTokens} tokens (first question's prompt), ${questions} questions, ` +
      `${maxTokens} greedy tokens each; lazy = ${formatSchedule(schedules[1][1]!)}. ${when} UTC.`,
    `Load before: \`${load}\`; after: \`${after}\`.`,
    '',
    '| mode | question | prompt tokens | cached_tokens | revived (layers) | TTFT cached ms | TTFT fresh ms | cached / first question | reply cached | reply fresh | right (cached / fresh) | cache MiB |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    const first = rows.find((x) => x.mode === r.mode && x.q === 1)!;
    lines.push(
      `| ${r.mode} | ${r.q} (${r.label}) | ${r.promptTokens} | ${r.cachedTokens} | ${r.revived}` +
        `${r.revivedLayers.length ? ` (${r.revivedLayers.join(',')})` : ''} | ${r.ttftCachedMs.toFixed(0)} | ` +
        `${r.ttftFreshMs.toFixed(0)} | ${(r.ttftCachedMs / first.ttftCachedMs).toFixed(3)} | ${r.replyCached.replaceAll('|', '\\|')} | ` +
        `${r.replyFresh.replaceAll('|', '\\|')} | ${r.rightCached ? 'yes' : 'no'} / ${r.rightFresh ? 'yes' : 'no'} | ${mb(r.cacheBytes)} |`,
    );
  }
  for (const mode of ['dense', 'lazy'] as const) {
    const m = rows.filter((r) => r.mode === mode);
    const later = m.slice(1).map((r) => r.ttftCachedMs / m[0].ttftCachedMs);
    // Every fresh run computes what the first question does: their median is the steadier reference.
    const freshMedian = med(m.map((r) => r.ttftFreshMs));
    const vsFresh = m.slice(1).map((r) => r.ttftCachedMs / freshMedian);
    lines.push(
      '',
      `${mode}: later questions' TTFT / first question's: max ${Math.max(...later).toFixed(3)}, ` +
        `median ${med(later).toFixed(3)} (target <= 0.1); / the median fresh TTFT (${freshMedian.toFixed(0)} ms): ` +
        `max ${Math.max(...vsFresh).toFixed(3)}, median ${med(vsFresh).toFixed(3)}; ` +
        `right ${m.filter((r) => r.rightCached).length}/${m.length} cached, ${m.filter((r) => r.rightFresh).length}/${m.length} fresh; ` +
        `same reply as fresh ${m.filter((r) => r.replyCached === r.replyFresh).length}/${m.length}.`,
    );
  }
  lines.push('', `Command: \`${command}\``);
  mkdirSync(dirname(a.out!), { recursive: true });
  writeFileSync(a.out!, `${lines.join('\n')}\n`);
  writeFileSync(a.out!.replace(/\.md$/, '.json'), JSON.stringify({ command, when, load, after, rows }, null, 1));
  const series = (mode: Row['mode'], which: 'ttftCachedMs' | 'ttftFreshMs', color: string, dashed = false) => ({
    name: `${mode} ${which === 'ttftCachedMs' ? 'through the cache' : 'fresh'}`,
    points: rows.filter((r) => r.mode === mode).map((r) => [r.q, r[which]] as [number, number]),
    color,
    dashed,
  });
  writeFileSync(
    a.svg!,
    renderPanels(
      [
        {
          title: `TTFT per question, one ${rows[0].promptTokens}-token document`,
          xLabel: 'question',
          yLabel: 'TTFT (ms)',
          logY: true,
          series: [
            series('dense', 'ttftCachedMs', PALETTE[0]),
            series('lazy', 'ttftCachedMs', PALETTE[1]),
            series('dense', 'ttftFreshMs', PALETTE[0], true),
            series('lazy', 'ttftFreshMs', PALETTE[1], true),
          ],
        },
      ],
      { perRow: 1, panelWidth: 560, panelHeight: 360, caption: `${command}; ${when} UTC` },
    ),
  );
  progress(`wrote ${a.out} and ${a.svg}`);
  process.stdout.write(`${lines.join('\n')}\n`);
}

runMain(main);

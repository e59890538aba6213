/**
 * The deployable topology as `npm start` serves it (SmolLM2, topology.json's 10 layer groups + 2
 * classifier groups, MEMORY_BUDGET_MB 128), started again and again: each start's first request makes
 * every group Worker load its part inside a Durable Object RPC, which is where workerd 1.20260426.1
 * hung (7 of 8 starts on 2026-12-07: its one thread in cppgc's IncrementalSweepTask forever,
 * docs/DEPLOY.md "Locally"). The stories260K topology (topology.test.ts) loads too little to hang.
 * With that workerd, three starts in a row all answering had a chance of about 1 in 500; a hung
 * start fails this test at vitest's test timeout.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../scripts/lib/node-env.js';
import { freePortIn } from '../../scripts/lib/port-range.js';
import { ensureTopologyShards } from '../../scripts/lib/shard-tasks.js';
import { generateTopology } from '../../scripts/lib/topology.js';
import { serveTopology, type RunningTopology } from '../../scripts/lib/topology-serve.js';

const OUT = join(REPO_ROOT, `.topology-smollm2-test-${process.pid}`);
const STARTS = 3;

let topo: RunningTopology;

beforeAll(async () => {
  process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= 'false';
  await ensureTopologyShards();
  // As npm start generates it: wrangler.toml and topology.json, no variable overridden.
  generateTopology({
    wrangler: join(REPO_ROOT, 'wrangler.toml'),
    topology: join(REPO_ROOT, 'topology.json'),
    out: OUT,
    vars: {},
  });
  // a range of its own: topology.test.ts may be starting its servers at the same time
  topo = await serveTopology({ dir: OUT, port: await freePortIn(8970, 8989) });
});

afterAll(async () => {
  await topo?.dispose();
  rmSync(OUT, { recursive: true, force: true });
});

describe('the deployable SmolLM2 topology in local workerd, started again and again', () => {
  it(`answers the README's France question on each of ${STARTS} starts (every group Worker loading its part anew)`, async () => {
    expect(topo.topology.vars.MEMORY_BUDGET_MB).toBe('128');
    const answers: string[] = [];
    for (let start = 1; start <= STARTS; start++) {
      if (start > 1) await topo.restart(); // workerd restarted: every isolate, and every loaded part, gone
      const t0 = performance.now();
      const res = await fetch(new URL('/v1/chat/completions', topo.url), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({
          model: topo.topology.model,
          messages: [{ role: 'user', content: 'What is the capital of France?' }],
          max_tokens: 40,
          temperature: 0,
        }),
      });
      const body = (await res.json()) as { choices?: { message: { content: string } }[] };
      expect(res.status, JSON.stringify(body)).toBe(200);
      answers.push(body.choices![0].message.content);
      // for the log: how long a start's first request took (a hang shows as a start that never reports)
      process.stderr.write(
        `start ${start} of ${STARTS}: answered in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
      );
    }
    expect(answers).toEqual(Array(STARTS).fill('The capital of France is Paris.'));
  });
});

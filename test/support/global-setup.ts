import type { TestProject } from 'vitest/node';
import { loadModelFromDir } from '../../scripts/lib/node-env.js';
import { ensureDefaultShards, ensureServedShards } from '../../scripts/lib/shard-tasks.js';
import { buildPlaygroundAssets } from '../../scripts/lib/playground-assets.js';
import { SequenceState } from '../../src/engine/caches.js';
import { generate } from '../../src/engine/generate.js';
import { parseSchedule } from '../../src/engine/policy.js';
import { runCliCases } from './cli-runner.js';
import { PARITY_CASES, type ParityResult } from './workerd-parity.js';

declare module 'vitest' {
  export interface ProvidedContext {
    nodeParity: ParityResult[];
  }
}

/**
 * Builds model-shards/stories260K once for both projects (Node reads it from disk, workerd through
 * ASSETS) and the playground's runtime folder beside it, and runs the parity generations in Node so that the workerd tests can compare.
 */
export default async function setup(project: TestProject): Promise<void> {
  const log = (line: string) => process.stderr.write(`shards: ${line}\n`);
  await ensureServedShards(log); // SmolLM2, for the workers-smollm2 project and the Node SmolLM2 tests
  const dir = await ensureDefaultShards(log);
  // the playground's in-browser runtime, which the Worker serves from the same assets (test/workers/playground.test.ts)
  log(`playground runtime: ${(await buildPlaygroundAssets()).dir}`);
  const model = await loadModelFromDir(dir);
  // The generate CLI runs in child processes while the parity generations below run here.
  const cli = runCliCases();
  cli.catch(() => undefined); // handled by the await below; this keeps an early failure from being "unhandled"
  const results: ParityResult[] = [];
  for (const c of PARITY_CASES) {
    const r = await generate(model, new SequenceState(model.config), model.tokenizer.encode(c.prompt, { bos: true }), {
      maxTokens: c.maxTokens,
      sampler: { temperature: c.temperature, topP: c.topP, topK: 0, seed: c.seed },
      schedule: c.schedule ? parseSchedule(c.schedule) : null,
    });
    results.push({ name: c.name, tokens: r.tokens, computedPerLayer: r.stats.computed_per_layer });
  }
  project.provide('nodeParity', results);
  project.provide('cliParity', await cli);
}

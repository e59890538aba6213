import { env } from 'cloudflare:workers';
import { inject } from 'vitest';
import { describe, expect, it } from 'vitest';
import { SequenceState } from '../../src/engine/caches.js';
import { generate } from '../../src/engine/generate.js';
import { parseSchedule } from '../../src/engine/policy.js';
import { getModel } from '../../src/worker/model-store.js';
import { PARITY_CASES } from '../support/workerd-parity.js';

describe('the engine inside workerd', () => {
  it.each(PARITY_CASES.map((c) => [c.name, c] as const))('gives the same tokens as Node: %s', async (name, c) => {
    const node = inject('nodeParity').find((r) => r.name === name)!;
    const model = await getModel(env);
    const r = await generate(model, new SequenceState(model.config), model.tokenizer.encode(c.prompt, { bos: true }), {
      maxTokens: c.maxTokens,
      sampler: { temperature: c.temperature, topP: c.topP, topK: 0, seed: c.seed },
      schedule: c.schedule ? parseSchedule(c.schedule) : null,
    });
    expect(r.tokens.length).toBeGreaterThan(20);
    expect(r.tokens).toEqual(node.tokens);
    expect(r.stats.computed_per_layer).toEqual(node.computedPerLayer);
  });

  it('loads the model once per isolate, concurrent callers sharing the load', async () => {
    const [a, b] = await Promise.all([getModel(env), getModel(env)]);
    expect(a).toBe(b);
  });

  it('rejects a model name with no shards, with a message naming the file', async () => {
    await expect(getModel({ ...env, MODEL_NAME: 'no-such-model' })).rejects.toThrow(/no-such-model\/manifest\.json/);
  });
});

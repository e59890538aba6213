import { beforeAll, describe, expect, it } from 'vitest';
import { SequenceState } from '../../src/engine/caches.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { defaultSchedule, type Schedule } from '../../src/engine/policy.js';
import { runTurn } from '../../src/engine/turns.js';
import { encodeChat } from '../../src/model/chat-prompt.js';
import { loadSmolLM2, twoFactDocument } from '../support/smollm2.js';

/**
 * Two session turns over one document on the served model: the first asks for one fact, the
 * second for another that the first one's ranking pruned. Under the query signal the second turn
 * must revive that fact from the Aux Cache and answer as dense does.
 */
describe('query-aware LazyLLM over two session turns (SmolLM2)', () => {
  let model: LoadedModel;
  const { doc, facts } = twoFactDocument();
  const ask = (what: string) => `What is the ${what}? Answer with the number only.`;
  beforeAll(async () => {
    model = await loadSmolLM2();
  });

  async function converse(schedule: Schedule | null) {
    const seq = new SequenceState(model.config);
    const sampler = { temperature: 0, topP: 1, topK: 0, seed: 1 };
    const turn1 = [{ role: 'user' as const, content: `${doc}\n\n${ask('pass key')}` }];
    const c1 = encodeChat(model.tokenizer, model.manifest.chatTemplate, turn1);
    const r1 = await runTurn(model, seq, c1.prompt, { maxTokens: 16, sampler, schedule, question: c1.question });
    const turn2 = [
      ...turn1,
      { role: 'assistant' as const, content: r1.result.text },
      { role: 'user' as const, content: ask('door code') },
    ];
    const c2 = encodeChat(model.tokenizer, model.manifest.chatTemplate, turn2);
    const r2 = await runTurn(model, seq, c2.prompt, { maxTokens: 16, sampler, schedule, question: c2.question });
    return { r1, r2, c1 };
  }

  it("the second question revives what the first pruned, and both answers are dense's (the default schedule)", async () => {
    const schedule = defaultSchedule(model.config.nLayers, 'question');
    expect(schedule.signal).toEqual({ kind: 'query' });
    const dense = await converse(null);
    expect(dense.r1.result.text).toContain(facts['pass key']);
    expect(dense.r2.result.text).toContain(facts['door code']);
    const lazy = await converse(schedule);
    expect(lazy.c1.prompt.length).toBeGreaterThan(400);
    expect(lazy.r1.result.stats.flops_ratio).toBeLessThan(0.7);
    // The same answers as dense (the replies may differ in a near-tie after them, e.g. a final period).
    const answer = (t: string) => t.match(/\d{5}/)?.[0];
    expect(answer(lazy.r1.result.text)).toBe(answer(dense.r1.result.text));
    expect(answer(lazy.r2.result.text)).toBe(answer(dense.r2.result.text));
    // The second turn reused the first one's cache and brought pruned tokens back from the Aux Cache.
    expect(lazy.r2.stats.reused_tokens).toBeGreaterThan(400);
    expect(lazy.r2.stats.revived_per_layer.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
  });
});

/**
 * The engine's token-level loop (src/engine/decode-loop.ts): what generate() and every script decode
 * with. It must feed exactly the tokens its consumer asks past, rank its steps as generate() does,
 * and give the same logits as the steps run by hand.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { SequenceState } from '../../src/engine/caches.js';
import { decodeLoop, nextStep } from '../../src/engine/decode-loop.js';
import { generate } from '../../src/engine/generate.js';
import { argmax } from '../../src/engine/logits.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { parseSchedule, stepRankings } from '../../src/engine/policy.js';
import { GREEDY } from '../../src/engine/sampler.js';
import { runStep } from '../../src/engine/step.js';
import { loadDefaultModel } from '../support/models.js';

describe('decodeLoop on stories260K', () => {
  let model: LoadedModel;
  let prompt: number[];
  beforeAll(async () => {
    model = await loadDefaultModel();
    prompt = model.tokenizer.encode('Once upon a time, there was a little girl named Lily. She', { bos: true });
  });

  it('picks greedily by default, and generate() built on it decodes the same tokens', async () => {
    const seq = new SequenceState(model.config);
    const loop = decodeLoop(model, seq, prompt, { schedule: null });
    const tokens: number[] = [];
    for await (const s of loop) {
      expect(s.index).toBe(tokens.length);
      expect(s.token).toBe(argmax(s.logits));
      expect(s.stats.newTokens).toBe(s.index === 0 ? prompt.length : 1);
      tokens.push(s.token);
      if (tokens.length === 6) break;
    }
    // the sixth token was picked but never asked past: not fed
    expect(seq.length).toBe(prompt.length + 5);
    const g = await generate(model, new SequenceState(model.config), prompt, {
      maxTokens: 6,
      sampler: GREEDY,
      schedule: null,
    });
    expect(g.tokens).toEqual(tokens);
  });

  it('feeds what `pick` returns (teacher forcing) with the logits of steps run by hand, ranked as generate() ranks', async () => {
    const schedule = parseSchedule('bos,signal:window:8,heads:max,pool:3,1:0.5,3:0.5');
    const forced = [300, 301, 302, 303];
    const seq = new SequenceState(model.config);
    const loop = decodeLoop(model, seq, prompt, { schedule, pick: (_, k) => forced[k] });
    const byHand = new SequenceState(model.config);
    const ranking = stepRankings(schedule.signal, null);
    let logits = (await runStep(model, byHand, prompt, { schedule, ranking: ranking(0, prompt.length) })).logits;
    for (let k = 0; k < forced.length; k++) {
      const s = await nextStep(loop);
      expect(s.token).toBe(forced[k]);
      expect(s.logits).toEqual(logits);
      logits = (await runStep(model, byHand, [forced[k]], { schedule, ranking: ranking(byHand.length, 1) })).logits;
    }
    expect((await nextStep(loop)).logits).toEqual(logits);
    expect(seq.tokens.slice(0, seq.length)).toEqual(byHand.tokens.slice(0, byHand.length));
  });
});

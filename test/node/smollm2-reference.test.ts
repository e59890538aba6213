/**
 * SmolLM2-135M-Instruct (Q4_1 GGUF) against two independent references (scripts/reference/):
 * - exact weights: a numpy forward over every tensor dequantized by the `gguf` package. This is what
 *   our shards compute, so the bound is tight;
 * - llama.cpp, which quantizes activations inside its Q4_1 products: looser, and measured.
 * Figures are printed for the closing notes.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { LoadedModel } from '../../src/engine/model.js';
import { encodePrompt } from '../../src/model/text-tokenizer.js';
import { renderChat } from '../../src/model/chat-prompt.js';
import { argmax } from '../../src/engine/logits.js';
import {
  type ChatFixture,
  compareLogits,
  fixture,
  greedyChatReplies,
  loadSmolLM2,
  type LogitsFixture,
} from '../support/smollm2.js';

const exact = fixture<LogitsFixture>('logits-exact.json');
const llamacpp = fixture<LogitsFixture>('logits-llamacpp.json');
const chat = fixture<ChatFixture>('chat-greedy.json');

let model: LoadedModel;
beforeAll(async () => {
  model = await loadSmolLM2();
});

describe('SmolLM2 logits against the exact-weights reference', () => {
  for (const p of exact.prompts) {
    it(`${p.name}: mean KL <= 1e-4, same top-1 wherever the reference's top-2 margin exceeds 0.1`, async () => {
      const c = await compareLogits(model, p);
      const { mean } = c;
      console.log(
        `[smollm2 vs exact] ${p.name}: ${p.positions.length} positions, mean KL ${mean.toExponential(2)}, max ${c.max.toExponential(2)}, top-1 agreement ${c.top1}/${c.kls.length}`,
      );
      expect(mean).toBeLessThanOrEqual(1e-4);
      expect(c.clearDisagreements).toEqual([]);
    });
  }
});

describe('SmolLM2 logits against llama.cpp', () => {
  for (const p of llamacpp.prompts.filter((x) => llamacpp.vs_exact?.[x.name])) {
    it(`${p.name}: as close to llama.cpp as llama.cpp is to the exact weights`, async () => {
      const ref = llamacpp.vs_exact![p.name];
      const c = await compareLogits(model, p);
      const { mean } = c;
      const agree = c.top1 / c.kls.length;
      console.log(
        `[smollm2 vs llama.cpp] ${p.name}: mean KL ${mean.toFixed(5)} (llama.cpp vs exact ${ref.mean_kl}), argmax agreement ${(100 * agree).toFixed(1)}% (llama.cpp vs exact ${(100 * ref.argmax_agreement).toFixed(1)}%)`,
      );
      // Same range: within twice llama.cpp's own distance from the exact weights.
      expect(mean).toBeLessThanOrEqual(2 * ref.mean_kl + 1e-3);
      expect(agree).toBeGreaterThanOrEqual(ref.argmax_agreement - 0.05);
    });
  }
});

describe('SmolLM2 greedy chat', () => {
  it('the chat template and tokenizer give the reference prompt ids (jinja2 + llama.cpp) for every prompt', () => {
    for (const c of chat.prompts)
      expect(encodePrompt(model.tokenizer, renderChat(model.manifest.chatTemplate, c.messages))).toEqual(c.prompt_ids);
  });

  it("replies equal the exact reference's up to its first near-tie; where llama.cpp parts is reported", async () => {
    const report: string[] = [];
    for (const { prompt: c, tokens, text, ref } of await greedyChatReplies(model, chat)) {
      const upTo = c.first_near_tie ?? ref.length;
      expect(tokens.slice(0, upTo), c.messages[0].content).toEqual(ref.slice(0, upTo));
      if (c.first_near_tie === null) expect(tokens).toEqual(ref);
      const partsAt = (a: number[], b: number[]) => {
        const i = a.findIndex((t, k) => t !== b[k]);
        return i < 0 ? (a.length === b.length ? null : Math.min(a.length, b.length)) : i;
      };
      const vsLlama = partsAt(
        tokens,
        c.llamacpp.ids.filter((t) => !chat.end_ids.includes(t)),
      );
      report.push(
        `${JSON.stringify(c.messages[0].content)}: near-tie at ${c.first_near_tie ?? 'none'}, vs exact parts at ${partsAt(tokens, ref) ?? 'never'}, vs llama.cpp at ${vsLlama ?? 'never'} -> ${JSON.stringify(text.slice(0, 60))}`,
      );
    }
    console.log(`[smollm2 greedy chat]\n${report.join('\n')}`);
  });
});

/**
 * SmolLM2 with the file's own 4-bit blocks in memory (com.microsoft MatMulNBits, src/shards/ggml-kernels.ts):
 * Q4_1 layers with a float zero point −m/d, the Q8_0 head as 8-bit blocks. Held to the same committed
 * exact-weights references and the same bounds as the f32 build (test/node/smollm2-reference.test.ts): it
 * computes the same weights, only decoded on every run instead of once at session creation.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type LoadedModel } from '../../src/engine/model.js';
import { parseGgufKernels } from '../../src/model/quant.js';
import { buildGgufShards } from '../../src/shards/build-shards.js';
import { initNodeRuntime } from '../../scripts/lib/node-env.js';
import { locateServedGguf } from '../../scripts/lib/served-model.js';
import { sourceFromGguf } from '../../scripts/lib/shard-tasks.js';
import { type ChatFixture, compareLogits, fixture, greedyChatReplies, type LogitsFixture } from '../support/smollm2.js';

const KERNEL = 'attn=nbits-zp,ffn=nbits-zp,head=nbits8';
const exact = fixture<LogitsFixture>('logits-exact.json');
const chat = fixture<ChatFixture>('chat-greedy.json');

describe(`SmolLM2 with ${KERNEL} against the exact-weights references`, () => {
  let model: LoadedModel;
  beforeAll(async () => {
    initNodeRuntime();
    const source = await sourceFromGguf((await locateServedGguf()).path, 'smollm2-nbits');
    const k = parseGgufKernels(KERNEL);
    if ('error' in k) throw new Error(k.error);
    const built = await buildGgufShards({ ...source, kernels: k.kernels, headParts: 2 });
    expect(built.manifest.quant.kernel).toBe(`${KERNEL},embed=q8`);
    model = await loadModel(JSON.stringify(built.manifest), async (f) => built.files.get(f)!, {
      memoryBudgetBytes: Infinity,
    });
  }, 600_000);

  for (const name of ['p512', 'p2048']) {
    it(`${name}: mean KL <= 1e-4 (the f32 build's bound), same top-1 wherever the reference's top-2 margin exceeds 0.1`, async () => {
      const p = exact.prompts.find((x) => x.name === name)!;
      const c = await compareLogits(model, p);
      console.log(
        `[${KERNEL} vs exact] ${name}: mean KL ${c.mean.toExponential(2)}, max ${c.max.toExponential(2)}, top-1 ${c.top1}/${c.kls.length}`,
      );
      expect(c.mean).toBeLessThanOrEqual(1e-4);
      expect(c.clearDisagreements).toEqual([]);
    }, 600_000);
  }

  it("all 8 chat replies equal the exact reference's up to its first near-tie (whole, where it has none)", async () => {
    for (const { prompt: c, tokens, ref } of await greedyChatReplies(model, chat)) {
      const upTo = c.first_near_tie ?? ref.length;
      expect(tokens.slice(0, upTo), c.messages[0].content).toEqual(ref.slice(0, upTo));
      if (c.first_near_tie === null) expect(tokens, c.messages[0].content).toEqual(ref);
    }
  }, 900_000);
});

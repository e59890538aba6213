import { beforeAll, describe, expect, it } from 'vitest';
import { promptWindows, storyStream } from '../../scripts/lib/prompts.js';
import { SequenceState } from '../../src/engine/caches.js';
import { generate } from '../../src/engine/generate.js';
import { LocalChain, splitLayers } from '../../src/engine/layer-group.js';
import type { LoadedModel, ModelPart } from '../../src/engine/model.js';
import {
  formatSchedule,
  importance,
  maxPool,
  parseSchedule,
  rankingFor,
  selectActive,
  stepRankings,
  validateSchedule,
} from '../../src/engine/policy.js';
import { ATTN_SCORE_BYTES, prefillChunks, runStep, type LayerTrace } from '../../src/engine/step.js';
import { LAYER_IO } from '../../src/model/shard-io.js';
import type { HostTensor } from '../../src/runtime/onnx-runtime.js';
import { encodeChat, questionText } from '../../src/model/chat-prompt.js';
import { devStories, loadStories260K } from '../support/paths.js';
import { loadDefaultModel, maxAbsDiff } from '../support/models.js';
import { loadSmolLM2 } from '../support/smollm2.js';

describe('importance: head reduction and neighbour pooling on known arrays', () => {
  it('reduces heads by mean or max, then max-pools over the centred window', () => {
    // 3 heads x 6 tokens
    const perHead = Float32Array.from([
      0.1, 0.0, 0.0, 0.6, 0.0, 0.3, 0.0, 0.9, 0.0, 0.0, 0.1, 0.0, 0.2, 0.0, 0.0, 0.0, 0.5, 0.3,
    ]);
    const mean = importance(perHead, 3, 'mean');
    expect([...mean].map((v) => +v.toFixed(6))).toEqual([0.1, 0.3, 0, 0.2, 0.2, 0.2]);
    expect([...importance(perHead, 3, 'max')]).toEqual([...Float32Array.from([0.2, 0.9, 0, 0.6, 0.5, 0.3])]);
    expect([...importance(perHead, 3, 'max', 3)]).toEqual([...Float32Array.from([0.9, 0.9, 0.9, 0.6, 0.6, 0.5])]);
  });

  it('max-pools as the naive windowed maximum does, for every odd kernel', () => {
    let x = 7;
    const a = Float32Array.from({ length: 97 }, () => ((x = (x * 48271) % 2147483647) % 1000) / 1000);
    for (const k of [1, 3, 7, 15, 31, 195]) {
      const r = (k - 1) / 2;
      const naive = Float32Array.from(a, (_, j) => Math.max(...a.slice(Math.max(0, j - r), j + r + 1)));
      expect([...maxPool(a, k)]).toEqual([...naive]);
    }
  });
});

describe('the protected tokens', () => {
  const incoming = Int32Array.from({ length: 20 }, (_, i) => i);
  // Scores rank the protected tokens (0 and 15..19) last: they must survive anyway.
  const scores = Float32Array.from({ length: 20 }, (_, i) => (i === 0 || i >= 15 ? 0 : 1 + (i % 5)));
  it('keeps token 0 and every token from keepFrom on, beside the best share of the others', () => {
    const got = [...selectActive(incoming, scores, 0.3, true, 1, 15)];
    for (const i of [0, 15, 16, 17, 18, 19]) expect(got).toContain(i);
    // 4 protected beyond the last: the share applies to the other 16 (ceil(0.3 * 16) = 5), plus those 4.
    expect(got).toHaveLength(9);
    expect(got.filter((i) => i > 0 && i < 15).every((i) => i % 5 === 4 || i % 5 === 3)).toBe(true);
  });
  it("with the paper's signal keeps only the last token beyond the share, as before", () => {
    expect(selectActive(incoming, scores, 0.3, false, 1, 19)).toHaveLength(6);
  });
});

describe('schedule items for the signal', () => {
  it('parse, format and validate', () => {
    const s = parseSchedule('bos,min:128,signal:query,heads:max,pool:15,8:0.3');
    expect(s.signal).toEqual({ kind: 'query' });
    expect(s.heads).toBe('max');
    expect(s.pool).toBe(15);
    expect(formatSchedule(s)).toBe('bos,min:128,signal:query,heads:max,pool:15,8:0.3');
    expect(formatSchedule(parseSchedule('signal:window:16,20:0.5'))).toBe('signal:window:16,20:0.5');
    expect(() => validateSchedule(parseSchedule('pool:4,2:0.5'), 5)).toThrow(/pool 4 must be an odd integer/);
    expect(() => validateSchedule(parseSchedule('signal:window:0,2:0.5'), 5)).toThrow(/signal window 0/);
    expect(() => parseSchedule('signal:question,2:0.5')).toThrow(/signal:last\|query\|window:K/);
    expect(() => parseSchedule('heads:mean,heads:max,2:0.5')).toThrow(/names heads twice/);
    // "all" beside anything else contradicts itself: refused, never rewritten.
    expect(() => parseSchedule('all,1:0.5')).toThrow(/contradicts itself/);
    expect(() => parseSchedule('1:0.5,all')).toThrow(/contradicts itself/);
    expect(formatSchedule(parseSchedule('all'))).toBe('all');
  });

  it("rank a step by the signal's rows, and decode steps by what the prefill remembered", () => {
    expect(rankingFor(undefined, 0, 100, null, null)).toEqual({ from: 99, to: 100, keepFrom: 99, fresh: true });
    expect(rankingFor({ kind: 'window', rows: 16 }, 0, 100, null, null)).toEqual({
      from: 84,
      to: 100,
      keepFrom: 84,
      fresh: true,
    });
    const q = { from: 80, to: 94 };
    const next = stepRankings({ kind: 'query' }, q);
    expect(next(0, 100)).toEqual({ from: 80, to: 94, keepFrom: 80, fresh: true });
    expect(next(100, 1)).toEqual({ from: 100, to: 101, keepFrom: 80, fresh: false });
    expect(() => rankingFor({ kind: 'query' }, 0, 100, null, null)).toThrow(/needs a question/);
    // A turn whose question is partly cached ranks by the rest of it.
    expect(rankingFor({ kind: 'query' }, 85, 15, null, q)).toEqual({ from: 85, to: 94, keepFrom: 85, fresh: true });
  });
});

describe('the question span, from the chat template', () => {
  const doc = 'Alice keeps the red key. Bruno keeps the blue key.\n\nSome more filler text about nothing.';
  const messages = [{ role: 'user' as const, content: `${doc}\n\nWho keeps the blue key? Answer with the name only.` }];
  it('is the last paragraph of the final user message', () => {
    expect(questionText(messages)?.text).toBe('Who keeps the blue key? Answer with the name only.');
    expect(
      questionText([
        { role: 'user', content: 'one paragraph only' },
        { role: 'assistant', content: 'ok' },
      ]),
    ).toEqual({ message: 0, text: 'one paragraph only' });
    expect(questionText([{ role: 'system', content: 'no user' }])).toBeNull();
  });

  it("covers exactly the question's tokens on SmolLM2 (ChatML) and stories260K (plain template)", async () => {
    for (const model of [await loadSmolLM2(), await loadDefaultModel()]) {
      const { prompt, question } = encodeChat(model.tokenizer, model.manifest.chatTemplate, messages);
      expect(question).not.toBeNull();
      const text = model.tokenizer.decode(prompt.slice(question!.from, question!.to));
      expect(text.trim()).toBe('Who keeps the blue key? Answer with the name only.');
      // Nothing of the question is left after the span, and the token before it is not part of it.
      expect(model.tokenizer.decode(prompt.slice(question!.to))).not.toMatch(/only/);
      expect(model.tokenizer.decode(prompt.slice(question!.from - 1, question!.from))).not.toMatch(/Who/);
    }
  });
});

describe("per-head attention of a span of query rows (the graph's attn output)", () => {
  let model: LoadedModel;
  const { tok } = loadStories260K();
  const [w] = promptWindows(storyStream(tok, devStories()), 40, 0, 1);
  beforeAll(async () => {
    model = await loadDefaultModel();
  });

  /** Layer 0 on the first n prompt tokens with no context: attn [heads, n] of query rows [from, to). */
  async function attn(n: number, from: number, to: number): Promise<Float32Array> {
    const { dim, kvDim } = model.config;
    const none = (data: HostTensor['data'], width: number): HostTensor => ({ data, dims: width ? [0, width] : [0] });
    const io = LAYER_IO.inputs;
    const out = await model.layers[0].run({
      [io.x]: { data: model.embed.lookup(w.prompt.slice(0, n)), dims: [n, dim] },
      [io.pos]: { data: Float32Array.from({ length: n }, (_, i) => i), dims: [n] },
      [io.pastK]: none(new Float32Array(0), kvDim),
      [io.pastV]: none(new Float32Array(0), kvDim),
      [io.pastKF16]: none(new Uint16Array(0), kvDim),
      [io.pastVF16]: none(new Uint16Array(0), kvDim),
      [io.pastKI8]: none(new Int8Array(0), kvDim),
      [io.pastVI8]: none(new Int8Array(0), kvDim),
      [io.pastKI8Scale]: none(new Float32Array(0), 1),
      [io.pastVI8Scale]: none(new Float32Array(0), 1),
      [io.pastPos]: none(new Float32Array(0), 0),
      [io.attnRows]: { data: BigInt64Array.of(BigInt(from), BigInt(to)), dims: [2] },
    });
    return out[LAYER_IO.outputs.attn].data as Float32Array;
  }

  it('averages each head over the rows exactly as the last rows of shorter prefixes do', async () => {
    // Row j's attention over keys 0..j is what a run on the first j+1 tokens gives as its last row
    // (causal: later tokens change nothing for it); keys after j get nothing from it.
    const n = 30;
    const H = model.config.nHeads;
    const [from, to] = [12, 19];
    const want = new Float32Array(H * n);
    for (let j = from; j < to; j++) {
      const row = await attn(j + 1, j, j + 1); // [H, j + 1]
      for (let h = 0; h < H; h++)
        for (let key = 0; key <= j; key++) want[h * n + key] += row[h * (j + 1) + key] / (to - from);
    }
    const got = await attn(n, from, to);
    expect(got.length).toBe(H * n);
    expect(maxAbsDiff(got, want)).toBeLessThan(1e-6);
    // Heads differ: a mean over them would lose what a max keeps.
    expect(maxAbsDiff(got.subarray(0, n), got.subarray(n, 2 * n))).toBeGreaterThan(1e-3);
  });
});

describe('query-aware LazyLLM in the engine (stories260K)', () => {
  let model: LoadedModel;
  const { tok } = loadStories260K();
  const [w] = promptWindows(storyStream(tok, devStories()), 300, 40, 1);
  const question = { from: 270, to: 290 };
  const schedule = validateSchedule(parseSchedule('signal:query,heads:max,pool:5,1:0.4,3:0.5'), 5);
  beforeAll(async () => {
    model = await loadDefaultModel();
  });

  /** Counts, per layer, how many times each token was a query. */
  function counter() {
    const counts = Array.from({ length: 5 }, () => new Map<number, number>());
    let revived = 0;
    const trace: LayerTrace = (layer, queries, rev) => {
      for (const i of queries) counts[layer].set(i, (counts[layer].get(i) ?? 0) + 1);
      revived += rev.length;
    };
    return { trace, max: () => Math.max(...counts.flatMap((m) => [...m.values()])), revived: () => revived, counts };
  }

  it("ranks by the question: a different active set than the paper's, with the question and what follows kept at every layer", async () => {
    const c = counter();
    const r = await generate(model, new SequenceState(model.config), w.prompt, {
      maxTokens: 1,
      sampler: { temperature: 0, topP: 1, topK: 0, seed: 1 },
      schedule,
      question,
      trace: c.trace,
    });
    for (let l = 0; l < 5; l++)
      for (let i = question.from; i < w.prompt.length; i++) expect(c.counts[l].get(i)).toBe(1);
    expect(c.counts[4].get(0)).toBe(1); // the attention sink
    const paper = counter();
    await generate(model, new SequenceState(model.config), w.prompt, {
      maxTokens: 1,
      sampler: { temperature: 0, topP: 1, topK: 0, seed: 1 },
      schedule: { ...schedule, signal: { kind: 'last' } },
      trace: paper.trace,
    });
    expect([...c.counts[1].keys()].sort()).not.toEqual([...paper.counts[1].keys()].sort());
    expect(r.stats.flops_ratio).toBeLessThan(0.7);
  });

  it('computes every token at most once per layer over prefill and 30 decode steps, and decode steps revive nothing', async () => {
    const c = counter();
    const seq = new SequenceState(model.config);
    const ranking = stepRankings(schedule.signal, question);
    await runStep(model, seq, w.prompt, { schedule, ranking: ranking(0, w.prompt.length), trace: c.trace });
    for (const t of w.next.slice(0, 30))
      await runStep(model, seq, [t], { schedule, ranking: ranking(seq.length, 1), trace: c.trace });
    expect(c.counts[4].size).toBeLessThan(seq.length);
    expect(c.max()).toBe(1);
    // Decode steps rank by the prefill's remembered scores: the same tokens stay out.
    expect(c.revived()).toBe(0);
  });

  it('a later turn with another question revives what the first pruned, and each token is still computed at most once per layer', async () => {
    const c = counter();
    const seq = new SequenceState(model.config);
    const sampler = { temperature: 0, topP: 1, topK: 0, seed: 1 };
    await generate(model, seq, w.prompt, { maxTokens: 4, sampler, schedule, question, trace: c.trace });
    const first = c.revived();
    const more = w.next.slice(0, 30);
    const start = seq.length;
    await generate(model, seq, more, {
      maxTokens: 4,
      sampler,
      schedule,
      question: { from: start + 5, to: start + 25 },
      trace: c.trace,
    });
    expect(c.max()).toBe(1);
    expect(c.revived()).toBeGreaterThan(first);
  });

  it("split across layer groups equals unsplit: the frontier carries the ranking, each group remembers its layers' scores", async () => {
    const parts: ModelPart[] = splitLayers(5, 3).map((layerRange, g, all) => ({
      ...model,
      layerRange,
      layers: model.layers.slice(layerRange.start, layerRange.end),
      embed: g === 0 ? model.embed : null,
      head: g === all.length - 1 ? model.head : [],
    }));
    const chain = new LocalChain(parts);
    const seq = new SequenceState(model.config);
    const ranking = stepRankings(schedule.signal, question);
    const ranking2 = stepRankings(schedule.signal, question);
    let a = await runStep(model, seq, w.prompt, { schedule, ranking: ranking(0, w.prompt.length) });
    let b = await chain.step(w.prompt, { schedule, ranking: ranking2(0, w.prompt.length) });
    expect(b.logits).toEqual(a.logits);
    expect(b.stats.computedPerLayer).toEqual(a.stats.computedPerLayer);
    for (const t of w.next.slice(0, 8)) {
      a = await runStep(model, seq, [t], { schedule, ranking: ranking(seq.length, 1) });
      b = await chain.step([t], { schedule, ranking: ranking2(chain.length, 1) });
      expect(b.logits).toEqual(a.logits);
      expect(b.stats.computedPerLayer).toEqual(a.stats.computedPerLayer);
    }
  });
});

describe('KV rows reserved up front', () => {
  it('generate() reserves prompt + max_tokens rows before the prefill, so no decode step regrows the cache', async () => {
    const model = await loadDefaultModel();
    const { tok } = loadStories260K();
    const [w] = promptWindows(storyStream(tok, devStories()), 130, 0, 1);
    const seq = new SequenceState(model.config);
    const capacities = new Set<number>();
    await generate(model, seq, w.prompt, {
      maxTokens: 20,
      sampler: { temperature: 0, topP: 1, topK: 0, seed: 1 },
      schedule: null,
      trace: () => capacities.add(seq.kv.capacity),
    });
    // 130 + 20 rows: not the next power of two (256) a doubling cache would hold after 129 tokens.
    expect([...capacities]).toEqual([150]);
  });
});

describe('prefill chunks', () => {
  it('bound the attention scores at long contexts', () => {
    expect(prefillChunks(2048, 2048, 9)).toBe(19); // 113 rows at most: near the 128 of short contexts
    expect(prefillChunks(100, 100, 9)).toBe(1);
    for (const keys of [1024, 4096, 8192, 32768]) {
      const n = prefillChunks(keys, keys, 9);
      const rows = Math.ceil(keys / n);
      expect(Math.max(16, 9 * rows * keys * 4)).toBeLessThanOrEqual(Math.max(ATTN_SCORE_BYTES, 9 * 16 * keys * 4));
    }
  });
});

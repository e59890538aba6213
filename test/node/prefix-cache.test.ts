import { beforeAll, describe, expect, it } from 'vitest';
import { promptWindows, storyStream } from '../../scripts/lib/prompts.js';
import { SequenceState } from '../../src/engine/caches.js';
import type { GenerateOptions } from '../../src/engine/generate.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { defaultSchedule, type Schedule } from '../../src/engine/policy.js';
import { PrefixCache, type PrefixCacheLimits } from '../../src/engine/prefix-cache.js';
import { runTurn, type TurnResult } from '../../src/engine/turns.js';
import { encodeChat } from '../../src/model/chat-prompt.js';
import { hostTenant, refuseGrowth } from '../../src/worker/groups/isolate-room.js';
import { isolatePrefixCache } from '../../src/worker/job/prefix-cache.js';
import { devStories, loadStories260K } from '../support/paths.js';
import { loadDefaultModel } from '../support/models.js';
import { loadSmolLM2, twoFactDocument } from '../support/smollm2.js';

const greedy = { temperature: 0, topP: 1, topK: 0, seed: 1 };
const opts = (schedule: Schedule | null, extra: Partial<GenerateOptions> = {}): GenerateOptions => ({
  maxTokens: 12,
  sampler: greedy,
  schedule,
  ...extra,
});

/** A stateless request as the Worker serves it (src/worker/http/respond.ts): lease, run, give back. */
async function viaCache(cache: PrefixCache, model: LoadedModel, prompt: number[], o: GenerateOptions) {
  const lease = cache.lease(prompt, prompt.length + o.maxTokens);
  try {
    const turn = await runTurn(model, lease.seq, prompt, o);
    cache.restore(lease);
    return { turn, matched: lease.matched };
  } catch (e) {
    cache.discard(lease);
    throw e;
  }
}

const fresh = (model: LoadedModel, prompt: number[], o: GenerateOptions) =>
  runTurn(model, new SequenceState(model.config), prompt, o);

const roomy = (minMatch = 8): PrefixCacheLimits => ({ maxBytes: 64 << 20, stateRoomBytes: 64 << 20, minMatch });
const sum = (a: number[]) => a.reduce((s, x) => s + x, 0);

describe('the prefix cache over stories260K', () => {
  let model: LoadedModel;
  const { tok } = loadStories260K();
  const [w] = promptWindows(storyStream(tok, devStories()), 300, 60, 1);
  const shared = w.prompt; // 300 tokens both requests share
  const first = [...shared, ...w.next.slice(0, 20)];
  const second = [...shared, ...w.next.slice(30, 45)];
  beforeAll(async () => {
    model = await loadDefaultModel();
  });

  it('dense: a request served from the cache gives exactly the tokens of the same request computed fresh', async () => {
    const cache = new PrefixCache(model.config, roomy());
    const a = await viaCache(cache, model, first, opts(null));
    expect(a.matched).toBe(0);
    const b = await viaCache(cache, model, second, opts(null));
    expect(b.matched).toBe(shared.length);
    expect(b.turn.stats.reused_tokens).toBe(shared.length);
    expect(b.turn.stats.new_prompt_tokens).toBe(second.length - shared.length);
    const alone = await fresh(model, second, opts(null));
    expect(b.turn.result.tokens).toEqual(alone.result.tokens);
    expect(b.turn.result.text).toBe(alone.result.text);
    // Only the new tokens were computed, at every layer: the fresh request's work less the shared prefix.
    expect(b.turn.stats.computed_per_layer).toEqual(alone.stats.computed_per_layer.map((c) => c - shared.length));
  });

  it('lazy: the same as running both requests on one state in sequence, with pruned tokens revived', async () => {
    const schedule = defaultSchedule(model.config.nLayers);
    const cache = new PrefixCache(model.config, roomy());
    await viaCache(cache, model, first, opts(schedule));
    const b = await viaCache(cache, model, second, opts(schedule));
    const one = new SequenceState(model.config);
    await runTurn(model, one, first, opts(schedule));
    const seqB = await runTurn(model, one, second, opts(schedule));
    expect(b.turn.result.tokens).toEqual(seqB.result.tokens);
    expect(b.turn.stats).toEqual(seqB.stats);
    expect(sum(b.turn.stats.revived_per_layer)).toBeGreaterThan(0);
    expect(cache.cachedTokens()).toEqual([one.tokens]);
  });

  it('a prefix shorter than the minimum match starts fresh and leaves the cached entry alone', async () => {
    const cache = new PrefixCache(model.config, roomy(400));
    await viaCache(cache, model, first, opts(null));
    const b = await viaCache(cache, model, second, opts(null));
    expect(b.matched).toBe(0);
    expect(b.turn.stats.reused_tokens).toBe(0);
    expect(cache.figures().entries).toBe(2);
  });

  it('requests out at once over one prefix never share a state: the second gets a fresh one, both answer as fresh', async () => {
    const cache = new PrefixCache(model.config, roomy());
    await viaCache(cache, model, first, opts(null));
    const l1 = cache.lease(second, second.length + 12);
    const l2 = cache.lease(second, second.length + 12);
    expect(l1.matched).toBe(shared.length);
    expect(l2.matched).toBe(0);
    expect(l2.seq).not.toBe(l1.seq);
    expect(cache.figures().entries).toBe(0);
    // Both are out at once; they run one after the other (one model's sessions run one call at a time).
    const r1 = await runTurn(model, l1.seq, second, opts(null));
    const r2 = await runTurn(model, l2.seq, second, opts(null));
    const alone = await fresh(model, second, opts(null));
    expect(r1.result.tokens).toEqual(alone.result.tokens);
    expect(r2.result.tokens).toEqual(alone.result.tokens);
    cache.restore(l1);
    cache.restore(l2);
    // Both hold the same tokens: the later one replaced the earlier (a prefix of it).
    expect(cache.figures().entries).toBe(1);
    expect(() => cache.restore(l1)).toThrow(/already given back/);
  });

  it('a failed request gives its lease up: the half-written state is never cached', async () => {
    const cache = new PrefixCache(model.config, roomy());
    await viaCache(cache, model, first, opts(null));
    const before = cache.cachedTokens();
    let steps = 0;
    const failing = opts(null, {
      beforeStep: () => {
        if (++steps === 3) throw new Error('the client hung up');
      },
    });
    await expect(viaCache(cache, model, second, failing)).rejects.toThrow(/hung up/);
    // The entry it leased is gone (written halfway), nothing was added, and nothing stays counted.
    expect(cache.figures()).toEqual({ entries: 0, bytes: 0, leasedBytes: 0 });
    const b = await viaCache(cache, model, second, opts(null));
    expect(b.matched).toBe(0);
    expect(b.turn.result.tokens).toEqual((await fresh(model, second, opts(null))).result.tokens);
  });

  it("the isolate's cache never takes states past what the memory budget leaves them, request after request", async () => {
    // A budget with room for the estimate's one state and about two more of these requests' states.
    const extra = 2 * new SequenceState(model.config).bytesAt(first.length + 12, false) + 1000;
    const tight: LoadedModel = { ...model, memoryBudgetBytes: model.memory.total + extra };
    const cache = isolatePrefixCache({ MODEL_NAME: 'stories260K', PREFIX_CACHE_MB: '1024' }, tight)!;
    const fixed = model.memory.total - model.memory.kvCache - model.memory.auxCache;
    expect(cache.limits.stateRoomBytes).toBe(tight.memoryBudgetBytes - fixed);
    const within = () => {
      const f = cache.figures();
      expect(fixed + f.bytes + f.leasedBytes).toBeLessThanOrEqual(tight.memoryBudgetBytes);
    };
    for (let k = 0; k < 6; k++) {
      const prompt = [1, ...w.next.slice(k, k + 20), ...shared.slice(1)];
      const lease = cache.lease(prompt, prompt.length + 12);
      within();
      await runTurn(tight, lease.seq, prompt, opts(null));
      cache.restore(lease);
      within();
    }
    expect(cache.figures().entries).toBeGreaterThan(0);
    expect(cache.figures().entries).toBeLessThan(6);
  });
});

describe('the prefix cache: least recently used eviction within its byte limits', () => {
  const cfg = { dim: 8, hiddenDim: 16, nLayers: 2, nHeads: 2, nKvHeads: 1, vocabSize: 64, seqLen: 256, kvDim: 4 };
  /** A state holding `tokens` (no model run: what is counted is the bytes held). */
  const stateOf = (cache: PrefixCache, tokens: number[]) => {
    const l = cache.lease(tokens, tokens.length);
    l.seq.truncate(0);
    l.seq.append(tokens);
    return l;
  };
  const seqOf = (start: number, n = 40) => Array.from({ length: n }, (_, i) => start + (i % 50));
  const one = () => {
    const s = new SequenceState(cfg as never);
    s.append(seqOf(0));
    return s.bytes;
  };

  it('evicts the least recently used entry when a new one would pass maxBytes; a lease refreshes nothing it leaves', () => {
    const b = one();
    const cache = new PrefixCache(cfg as never, { maxBytes: 2 * b + b / 2, stateRoomBytes: Infinity, minMatch: 4 });
    for (const start of [1, 2, 3]) cache.restore(stateOf(cache, seqOf(start)));
    expect(cache.figures().entries).toBe(2);
    expect(cache.cachedTokens().map((t) => t[0])).toEqual([2, 3]);
    // Leasing entry 2 and giving it back makes it the most recent: entry 3 goes first next time.
    const again = cache.lease([...seqOf(2), 9], 41);
    expect(again.matched).toBe(40);
    cache.restore(again);
    cache.restore(stateOf(cache, seqOf(4)));
    expect(cache.cachedTokens().map((t) => t[0])).toEqual([2, 4]);
    expect(cache.figures().bytes).toBeLessThanOrEqual(2 * b + b / 2);
  });

  it("evicts to admit a request's own state within the room every state shares, before the request runs", () => {
    const b = one();
    const need = new SequenceState(cfg as never).bytesAt(40, true);
    const room = 3 * b + need / 2;
    const cache = new PrefixCache(cfg as never, { maxBytes: 10 * b, stateRoomBytes: room, minMatch: 4 });
    for (const start of [1, 2, 3]) cache.restore(stateOf(cache, seqOf(start)));
    expect(cache.figures().entries).toBe(3);
    // A request matching nothing: room for it is made at once, least recently used first.
    const l = cache.lease(seqOf(7), 40);
    const f = cache.figures();
    expect(f.bytes + f.leasedBytes).toBeLessThanOrEqual(room);
    expect(cache.cachedTokens().map((t) => t[0])).toEqual([2, 3]);
    cache.discard(l);
    expect(cache.figures().leasedBytes).toBe(0);
  });

  it('never caches a state larger than maxBytes', () => {
    const b = one();
    const cache = new PrefixCache(cfg as never, { maxBytes: b - 1, stateRoomBytes: Infinity, minMatch: 4 });
    cache.restore(stateOf(cache, seqOf(1)));
    expect(cache.figures()).toEqual({ entries: 0, bytes: 0, leasedBytes: 0 });
  });
});

/**
 * The served model with its chat template: the same document, two questions, each a stateless
 * request. The second reuses the document's state, and the query signal revives what the first
 * question's ranking pruned.
 */
describe('the prefix cache over one document and two questions (SmolLM2)', () => {
  let model: LoadedModel;
  const { doc, facts } = twoFactDocument();
  const ask = (what: string) => ({
    role: 'user' as const,
    content: `${doc}\n\nWhat is the ${what}? Answer with the number only.`,
  });
  beforeAll(async () => {
    model = await loadSmolLM2();
  });

  it('the second question reuses the document, revives pruned tokens, and answers as a fresh request and as one state in sequence', async () => {
    const schedule = defaultSchedule(model.config.nLayers, 'question');
    const q1 = encodeChat(model.tokenizer, model.manifest.chatTemplate, [ask('pass key')]);
    const q2 = encodeChat(model.tokenizer, model.manifest.chatTemplate, [ask('door code')]);
    const o = (q: typeof q1, s: Schedule | null) => opts(s, { maxTokens: 16, question: q.question });
    const cache = new PrefixCache(model.config, { ...roomy(16), maxBytes: 1 << 30, stateRoomBytes: 1 << 30 });
    await viaCache(cache, model, q1.prompt, o(q1, schedule));
    const b = await viaCache(cache, model, q2.prompt, o(q2, schedule));
    expect(b.matched).toBeGreaterThan(400);
    expect(sum(b.turn.stats.revived_per_layer)).toBeGreaterThan(0);
    const one = new SequenceState(model.config);
    await runTurn(model, one, q1.prompt, o(q1, schedule));
    const inSequence: TurnResult = await runTurn(model, one, q2.prompt, o(q2, schedule));
    expect(b.turn.result.tokens).toEqual(inSequence.result.tokens);
    const answer = (t: string) => t.match(/\d{5}/)?.[0];
    const dense = await fresh(model, q2.prompt, o(q2, null));
    expect(answer(dense.result.text), dense.result.text).toBe(facts['door code']);
    expect(answer(b.turn.result.text), b.turn.result.text).toBe(facts['door code']);
    // Dense through the cache: exactly the fresh request's tokens.
    const denseCache = new PrefixCache(model.config, { ...roomy(16), maxBytes: 1 << 30, stateRoomBytes: 1 << 30 });
    await viaCache(denseCache, model, q1.prompt, o(q1, null));
    const d = await viaCache(denseCache, model, q2.prompt, o(q2, null));
    expect(d.matched).toBe(b.matched);
    expect(d.turn.result.tokens).toEqual(dense.result.tokens);
  });
});

describe('the split prefix cache in a group isolate (src/worker/groups/isolate-room.ts)', () => {
  const cfg = { dim: 8, hiddenDim: 16, nLayers: 2, nHeads: 2, nKvHeads: 1, vocabSize: 64, seqLen: 256, kvDim: 4 };
  const stateOf = (n: number) => {
    const s = new SequenceState(cfg as never);
    s.append(Array.from({ length: n }, (_, i) => i % 50));
    return s;
  };

  it("drops states kept for reuse before refusing another state's growth, and refuses only when that is not enough", () => {
    const kept = stateOf(200);
    const session = stateOf(40);
    const tenant = {
      kept: kept as SequenceState | null,
      heldStates() {
        return [session, ...(this.kept ? [this.kept] : [])];
      },
      dropKept() {
        const had = this.kept !== null;
        this.kept = null;
        return had;
      },
    };
    hostTenant(tenant);
    const growing = stateOf(10);
    const memory = { total: 1000, kvCache: 0, auxCache: 0 } as never;
    const need = growing.bytesAt(100, true);
    // Room for the session's state and the growth, not for the kept state too.
    const part = { memory, memoryBudgetBytes: 1000 + session.bytes + need, layerRange: { start: 0, end: 2 } } as never;
    expect(refuseGrowth(part, growing, 100, true)).toBeNull();
    expect(tenant.kept).toBeNull();
    // Nothing kept is left to drop: a growth that does not fit is refused, and the session's state stays.
    const small = { memory, memoryBudgetBytes: 1000 + need, layerRange: { start: 0, end: 2 } } as never;
    expect(refuseGrowth(small, growing, 100, true)).toMatchObject({ ok: false, error: { code: 'isolate_full' } });
    expect(tenant.heldStates()).toEqual([session]);
  });
});

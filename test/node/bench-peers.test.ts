/**
 * The benchmark's peer runners (scripts/bench/peers/) compute what our dense row computes, so that a
 * peer row cannot silently measure something else: on a short chat prompt where llama.cpp's greedy
 * reply equals the exact-weights reference ("Translate 'good morning' into Spanish.", 9 tokens
 * ending at <|im_end|>), each peer gives the same tokens as our dense engine row, and each reports
 * its own prompt token count equal to ours, on that prompt and on a 128-token prose window (the
 * bench's prompts are such windows, handed to wllama as text).
 *
 * transformers.js runs our monolithic export of the same weights; at fp32 (the exact weights) it must
 * match, while the bench's q8 and q4 rows re-quantize and are only compared. wllama runs in Debian's
 * headless Chromium, as on CI. llama.cpp native needs Python with
 * llama-cpp-python, which CI does not have: that test skips and prints why. Our own rows inside
 * workerd (the bench's `workerd-dense` and `workerd-lazy`) must give dense's tokens too.
 */
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultSchedule, formatSchedule } from '../../src/engine/policy.js';
import { startEngine, type EnginePeers } from '../../scripts/bench/peers/engine.js';
import { startLlamaCpp } from '../../scripts/bench/peers/llamacpp.js';
import type { Peer, PeerPrompt } from '../../scripts/bench/peers/peer.js';
import {
  agreesWithExact,
  chatChecks,
  shardTokenizer,
  textWindows,
  type ChatCheck,
} from '../../scripts/bench/peers/prompts.js';
import { ensureSmolExport } from '../../scripts/bench/peers/smol-export.js';
import { startTransformers } from '../../scripts/bench/peers/transformers.js';
import { startWllama } from '../../scripts/bench/peers/wllama.js';
import { startWorkerdEngine } from '../../scripts/bench/peers/workerd.js';
import { locateServedGguf, servedShardsDir } from '../../scripts/lib/served-model.js';
import { fixture, type LogitsFixture } from '../support/smollm2.js';

const PROMPT = "Translate 'good morning' into Spanish.";
/**
 * The transformers.js export (over 600 MB) and the frozen Worker go outside the checkout, so that
 * `npm test` leaves it clean; the export is kept there between runs (stamped by the GGUF's sha256).
 */
const CACHE = process.env.LAZY_EDGE_TEST_CACHE ?? join(tmpdir(), 'lazy-edge-test-cache');
const N_CTX = 512;
const log = (m: string) => process.stderr.write(`  ${m}\n`);

let engine: EnginePeers;
let gguf: string;
let sha256: string;
let check: ChatCheck;
let prose: PeerPrompt;
let dense: { chat: number[]; proseTokens: number; prose: number[] };

beforeAll(async () => {
  const shards = servedShardsDir();
  ({ path: gguf, sha256 } = await locateServedGguf());
  const tok = shardTokenizer(shards);
  check = chatChecks(shards, tok).find((c) => c.name === PROMPT)!;
  // 128 tokens of the MPL 2.0 (the fixtures' p512 ids), so that the test needs no data file
  prose = textWindows(tok, fixture<LogitsFixture>('logits-exact.json').prompts.find((p) => p.name === 'p512')!.ids, [
    128,
  ])[128];
  engine = await startEngine({ shards, contextTokens: N_CTX, schedule: formatSchedule(defaultSchedule(30)), log });
  const chat = await engine.dense.run(check.prompt, check.maxTokens, check.endIds);
  const p = await engine.dense.run(prose, 4);
  dense = { chat: chat.tokens, proseTokens: p.promptTokens, prose: p.tokens };
});

afterAll(async () => {
  await engine?.close();
});

it('our dense row answers the check prompt as the exact-weights reference does, and counts its tokens', () => {
  expect(check.firstNearTie).toBeNull();
  expect(dense.chat).toEqual(check.exact);
  expect(agreesWithExact(check, dense.chat)).toBe(true);
  expect(dense.proseTokens).toBe(128);
});

/** The same greedy tokens as dense, and the peer's own prompt token counts equal to ours. */
async function sameAsDense(peer: Peer): Promise<void> {
  const chat = await peer.run(check.prompt, check.maxTokens, check.endIds);
  log(`${peer.row}: ${JSON.stringify(chat.tokens)}, prompt tokens ${chat.promptTokens}`);
  expect(chat.promptTokens).toBe(check.prompt.ids.length);
  expect(chat.tokens).toEqual(dense.chat);
  const p = await peer.run(prose, 4);
  expect(p.promptTokens).toBe(dense.proseTokens);
  expect(p.tokens).toHaveLength(4);
}

describe('wllama in headless Chromium', () => {
  for (const threads of [1, 2]) {
    it(`${threads} thread(s): same tokens as dense, its own prompt token counts equal ours`, async () => {
      const s = await startWllama({ gguf, threads, nCtx: N_CTX, log });
      if (!s.ok) throw new Error(s.reason); // Chromium and npm are on CI: this peer must run there
      try {
        expect(s.peer.info.threads).toBe(threads);
        expect(s.peer.info.cross_origin_isolated).toBe(true);
        await sameAsDense(s.peer);
      } finally {
        await s.peer.close();
      }
    });
  }
});

describe('llama.cpp native (llama-cpp-python)', () => {
  it('1 thread: same tokens as dense, its own prompt token counts equal ours', async (ctx) => {
    const s = await startLlamaCpp({ gguf, threads: 1, nCtx: N_CTX, log });
    if (!s.ok) {
      console.log(`[bench-peers] skipping llama.cpp native: ${s.reason}`);
      ctx.skip();
      return;
    }
    try {
      await sameAsDense(s.peer);
    } finally {
      await s.peer.close();
    }
  });
});

describe('transformers.js on our monolithic export', () => {
  it('fp32 (the exact weights): same tokens as dense, its prompt token counts equal ours', async () => {
    const exported = await ensureSmolExport(gguf, sha256, ['fp32'], log, CACHE);
    const s = await startTransformers({ exported, dtype: 'fp32', log });
    if (!s.ok) throw new Error(s.reason);
    try {
      await sameAsDense(s.peer);
    } finally {
      await s.peer.close();
    }
  });
});

describe('our engine inside workerd (scripts/bench/worker, a frozen snapshot served locally)', () => {
  it('dense and lazy: the same tokens as dense in Node, and its prompt token counts equal ours', async () => {
    const w = await startWorkerdEngine({
      model: basename(servedShardsDir()),
      contextTokens: N_CTX,
      schedule: formatSchedule(defaultSchedule(30)),
      logFile: join(tmpdir(), `bench-peers-workerd-${process.pid}.log`),
      log,
      freezeUnder: CACHE,
    });
    try {
      await sameAsDense(w.dense);
      // the default schedule's floor (min:128) keeps all 39 prompt tokens: this checks the lazy row's path through workerd
      await sameAsDense(w.lazy);
    } finally {
      await w.close();
    }
  });
});

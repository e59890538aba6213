/**
 * The SmolLM2-135M-Instruct section of `npm run bench`: our engine (dense, lazy) against what a user
 * would pick instead on the same GGUF: wllama in headless Chromium (1 and 2 threads), llama.cpp
 * native on one thread, and transformers.js on our monolithic ONNX export of the same weights at q8
 * (its wasm default) and q4. Every row gets the same prompt ids (wllama the text that tokenizes to them),
 * rows are interleaved within each repetition in rotating order, and every figure carries the cores
 * other processes kept busy while it was taken.
 *
 * Before timing, every row answers the 8 chat prompts of test/fixtures/smollm2/chat-greedy.json
 * greedily: its replies against the exact-weights reference, and its own prompt token counts
 * against ours, so that a row cannot silently measure something else.
 */
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { defaultSchedule, formatSchedule } from '../../src/engine/policy.js';
import type { ModelConfig } from '../../src/model/config.js';
import { ForeignLoad } from '../lib/clock.js';
import { startEngine, type EnginePeers } from './peers/engine.js';
import { startLlamaCpp } from './peers/llamacpp.js';
import type { Peer, PeerPrompt, PeerTrial } from './peers/peer.js';
import { agreesWithExact, chatChecks, shardTokenizer, textWindows } from './peers/prompts.js';
import { ensureSmolExport } from './peers/smol-export.js';
import { startTransformers } from './peers/transformers.js';
import { startWllama } from './peers/wllama.js';
import { startWorkerdEngine, type WorkerdPeers } from './peers/workerd.js';
import { REPO_ROOT } from '../lib/node-env.js';
import { locateServedGguf, servedShardsDir } from '../lib/served-model.js';

export const SMOL_ID = 'smollm2-135m-instruct';
export const SMOL_PEERS = [
  'dense',
  'lazy',
  'workerd-dense',
  'workerd-lazy',
  'llama.cpp',
  'wllama-1',
  'wllama-2',
  'transformers.js-q8',
  'transformers.js-q4',
] as const;
export type SmolPeerId = (typeof SMOL_PEERS)[number];
/** The prompt text: the first N tokens of the LGPL 2.1 (5,865 tokens; the fixtures' p2048 is its first 2048). */
export const SMOL_TEXT = resolve(REPO_ROOT, '../shared/data/lgpl-2.1.txt');

export interface SmolTrial extends PeerTrial {
  /** cores other processes kept busy during this trial */
  foreignCores: number;
}

export interface SmolCheck {
  name: string;
  ids: number[];
  promptTokens: number;
  expectedPromptTokens: number;
  agreesWithExact: boolean;
}

export interface SmolRow {
  id: SmolPeerId;
  row: string;
  available: boolean;
  reason?: string;
  info?: Record<string, unknown>;
  peakRssMb: number | null;
  checks: SmolCheck[];
  trials: Record<number, SmolTrial[]>;
}

export interface SmolRun {
  gguf: string;
  sha256: string;
  config: ModelConfig;
  schedule: string;
  lengths: number[];
  reps: number;
  decode: number;
  rows: SmolRow[];
  foreignCoresMedian: number;
}

export async function benchSmolLM2(opts: {
  lengths: number[];
  reps: number;
  decode: number;
  peers: readonly SmolPeerId[];
  checks: boolean;
  log: (m: string) => void;
}): Promise<SmolRun> {
  const { log } = opts;
  const shards = servedShardsDir();
  const manifest = JSON.parse(readFileSync(join(shards, 'manifest.json'), 'utf8')) as { config: ModelConfig };
  const { path: gguf, sha256 } = await locateServedGguf();
  const tok = shardTokenizer(shards);
  const windows = textWindows(tok, readFileSync(SMOL_TEXT, 'utf8'), [128, ...opts.lengths]);
  const checks = opts.checks ? chatChecks(shards, tok) : [];
  const maxLen = Math.max(...opts.lengths);
  const nCtx = Math.max(maxLen, 128) + Math.max(opts.decode, 8) + 64; // the warm-up runs 128 + 8
  const schedule = formatSchedule(defaultSchedule(manifest.config.nLayers));

  const rows: SmolRow[] = [];
  const live = new Map<SmolPeerId, Peer>();
  let engine: EnginePeers | null = null;
  let workerd: WorkerdPeers | null = null;
  const add = (id: SmolPeerId, row: string, peer: Peer | null, reason?: string) => {
    rows.push({ id, row, available: !!peer, reason, info: peer?.info, peakRssMb: null, checks: [], trials: {} });
    if (peer) live.set(id, peer);
    log(peer ? `${row}: ready ${JSON.stringify(peer.info)}` : `${row}: NOT AVAILABLE: ${reason}`);
  };
  try {
    if (opts.peers.includes('dense') || opts.peers.includes('lazy')) {
      log(`engine: loading ${shards} (context ${nCtx})`);
      engine = await startEngine({ shards, contextTokens: nCtx, schedule, log });
      if (opts.peers.includes('dense')) add('dense', 'dense', engine.dense);
      if (opts.peers.includes('lazy')) add('lazy', `lazy \`${schedule}\``, engine.lazy);
    }
    if (opts.peers.includes('workerd-dense') || opts.peers.includes('workerd-lazy')) {
      const logFile = join(tmpdir(), `lazy-edge-bench-smollm2-workerd-${process.pid}.log`);
      try {
        workerd = await startWorkerdEngine({ model: basename(shards), contextTokens: nCtx, schedule, logFile, log });
        if (opts.peers.includes('workerd-dense')) add('workerd-dense', workerd.dense.row, workerd.dense);
        if (opts.peers.includes('workerd-lazy')) add('workerd-lazy', workerd.lazy.row, workerd.lazy);
      } catch (e) {
        for (const id of ['workerd-dense', 'workerd-lazy'] as const)
          if (opts.peers.includes(id))
            add(
              id,
              `${id.slice(8)} (workerd)`,
              null,
              `wrangler dev did not serve the model: ${(e as Error).message} (log ${logFile})`,
            );
      }
    }
    if (opts.peers.includes('llama.cpp')) {
      const s = await startLlamaCpp({ gguf, threads: 1, nCtx, log });
      add('llama.cpp', s.ok ? s.peer.row : s.row, s.ok ? s.peer : null, s.ok ? undefined : s.reason);
    }
    for (const threads of [1, 2]) {
      const id = `wllama-${threads}` as SmolPeerId;
      if (!opts.peers.includes(id)) continue;
      const s = await startWllama({ gguf, threads, nCtx, log });
      add(id, s.ok ? s.peer.row : s.row, s.ok ? s.peer : null, s.ok ? undefined : s.reason);
    }
    const tjs = (['q8', 'q4'] as const).filter((d) => opts.peers.includes(`transformers.js-${d}`));
    if (tjs.length) {
      const exported = await ensureSmolExport(gguf, sha256, tjs, log);
      for (const dtype of tjs) {
        const s = await startTransformers({ exported, dtype, log });
        add(`transformers.js-${dtype}`, s.ok ? s.peer.row : s.row, s.ok ? s.peer : null, s.ok ? undefined : s.reason);
      }
    }
    const order = rows.filter((r) => r.available);

    // Warm-up (V8 tiers hot wasm up only after it has run a while; llama.cpp touches its buffers).
    for (const r of order) {
      log(`${r.row}: warm-up`);
      for (let i = 0; i < 3; i++) await live.get(r.id)!.run(windows[128], 8);
    }

    for (const c of checks) {
      for (const r of order) {
        const t = await live.get(r.id)!.run(c.prompt, c.maxTokens, c.endIds);
        const agrees = agreesWithExact(c, t.tokens);
        r.checks.push({
          name: c.name,
          ids: t.tokens,
          promptTokens: t.promptTokens,
          expectedPromptTokens: c.prompt.ids.length,
          agreesWithExact: agrees,
        });
        log(
          `${r.row.padEnd(28)} check "${c.name}": ${agrees ? 'agrees with' : 'DEPARTS from'} the exact weights; prompt tokens ${t.promptTokens}/${c.prompt.ids.length}`,
        );
      }
    }

    for (const length of opts.lengths) {
      const prompt: PeerPrompt = windows[length];
      for (let rep = 0; rep < opts.reps; rep++) {
        const rotated = order.map((_, i) => order[(i + rep) % order.length]);
        for (const r of rotated) {
          const w = new ForeignLoad();
          const t = await live.get(r.id)!.run(prompt, opts.decode);
          const trial: SmolTrial = { ...t, foreignCores: w.cores() };
          (r.trials[length] ??= []).push(trial);
          const own = t.own ? ` (own API: TTFT ${t.own.ttftMs.toFixed(0)} ms)` : '';
          log(
            `${r.row.padEnd(28)} len ${String(length).padStart(4)} rep ${rep + 1}/${opts.reps}: TTFT ${t.ttftMs.toFixed(0)} ms${own}, ` +
              `decode ${((opts.decode * 1000) / t.decodeMs).toFixed(1)} tok/s, prompt tokens ${t.promptTokens}, other processes ${trial.foreignCores.toFixed(2)} cores`,
          );
        }
      }
    }
    for (const r of order) r.peakRssMb = await live.get(r.id)!.peakRssMb();
  } finally {
    for (const [id, p] of live)
      if (id !== 'dense' && id !== 'lazy') await p.close().catch((e: Error) => log(`closing ${id}: ${e.message}`));
    await engine?.close().catch(() => {});
    await workerd?.close().catch(() => {});
  }
  const all = rows
    .flatMap((r) =>
      Object.values(r.trials)
        .flat()
        .map((t) => t.foreignCores),
    )
    .sort((a, b) => a - b);
  return {
    gguf,
    sha256,
    config: manifest.config,
    schedule,
    lengths: opts.lengths,
    reps: opts.reps,
    decode: opts.decode,
    rows,
    foreignCoresMedian: all.length ? all[Math.floor(all.length / 2)] : NaN,
  };
}

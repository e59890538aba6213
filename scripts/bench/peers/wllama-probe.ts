/**
 * Where does wllama's time go? Run by hand, under the measurement lock:
 *   flock /tmp/lazy-edge-measure.lock npx tsx scripts/bench/peers/wllama-probe.ts \
 *     [--length 512] [--reps 3] [--decode 16] [--threads 1] [--compat DIR] [--gguf FILE] [--no-native]
 *
 * Interleaves llama.cpp native and wllama's default build (Memory64 + JSPI), and with --compat DIR
 * (the folder of @wllama/wllama-compat, e.g. after `npm install --prefix /tmp/x
 * @wllama/wllama-compat@3.13.0`; not a dependency of this project) its compat build (wasm32 +
 * Asyncify), on the same prompt. Per row: prefill tokens/s by wllama's own timer (llama-server's
 * prompt_ms) and by the page clock, the difference (tokenization, messages between page and worker,
 * the harness), decode tokens/s, the browser's CPU seconds per wall second (does it use the
 * threads it was given?), and the cores other processes kept busy meanwhile. --gguf FILE: another
 * file of the same model (e.g. requantized to a type whose wasm kernel has SIMD), same vocabulary.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ForeignLoad } from '../../lib/clock.js';
import { SMOL_TEXT } from '../smollm2.js';
import { fail, runMain } from '../../lib/node-env.js';
import { locateServedGguf, servedShardsDir } from '../../lib/served-model.js';
import { median } from '../../lib/stats.js';
import { startLlamaCpp } from './llamacpp.js';
import type { Peer, PeerTrial } from './peer.js';
import { shardTokenizer, textWindows } from './prompts.js';
import { startWllama } from './wllama.js';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      length: { type: 'string', default: '512' },
      reps: { type: 'string', default: '3' },
      decode: { type: 'string', default: '16' },
      threads: { type: 'string', default: '1' },
      compat: { type: 'string' },
      gguf: { type: 'string' },
      'no-native': { type: 'boolean', default: false },
    },
  });
  const [length, reps, decode, threads] = ['length', 'reps', 'decode', 'threads'].map((k) =>
    Number(values[k as 'length']),
  );
  if (![length, reps, decode, threads].every((x) => Number.isInteger(x) && x > 0))
    fail('--length, --reps, --decode, --threads: positive integers');
  const log = (m: string) => process.stderr.write(`[probe] ${m}\n`);
  const gguf = values.gguf ?? (await locateServedGguf()).path;
  const prompt = textWindows(shardTokenizer(servedShardsDir()), readFileSync(SMOL_TEXT, 'utf8'), [length])[length];
  const peers: Peer[] = [];
  const nCtx = length + decode + 64;
  if (!values['no-native']) {
    const s = await startLlamaCpp({ gguf, threads, nCtx, log });
    if (s.ok) peers.push(s.peer);
    else log(`llama.cpp: ${s.reason}`);
  }
  for (const compatDir of values.compat ? [undefined, values.compat] : [undefined]) {
    const s = await startWllama({ gguf, threads, nCtx, log, compatDir });
    if (!s.ok) fail(s.reason);
    log(`${s.peer.row}: ${JSON.stringify(s.peer.info)}`);
    peers.push(s.peer);
  }
  const warm = textWindows(shardTokenizer(servedShardsDir()), readFileSync(SMOL_TEXT, 'utf8'), [64])[64];
  const trials = new Map<Peer, (PeerTrial & { foreign: number })[]>(peers.map((p) => [p, []]));
  try {
    for (const p of peers) for (let i = 0; i < 2; i++) await p.run(warm, 4); // warm-up
    for (let rep = 0; rep < reps; rep++) {
      for (const p of peers.map((_, i) => peers[(i + rep) % peers.length])) {
        const w = new ForeignLoad();
        const t = await p.run(prompt, decode);
        trials.get(p)!.push({ ...t, foreign: w.cores() });
        log(
          `${p.row}: TTFT ${t.ttftMs.toFixed(0)} ms${t.own ? ` (own ${t.own.ttftMs.toFixed(0)})` : ''}, decode ${((decode * 1000) / t.decodeMs).toFixed(1)} tok/s, prompt tokens ${t.promptTokens}`,
        );
      }
    }
  } finally {
    for (const p of peers) await p.close();
  }
  const rows = peers.map((p) => {
    const ts = trials.get(p)!;
    const page = median(ts.map((t) => t.ttftMs));
    const own = ts[0].own ? median(ts.map((t) => t.own!.ttftMs)) : NaN;
    return {
      row: p.row,
      build: p.info.build ?? p.info.engine,
      prompt_tokens: ts[0].promptTokens,
      prefill_tok_s_page: (length * 1000) / page,
      prefill_tok_s_own: (length * 1000) / own,
      page_minus_own_ms: page - own,
      decode_tok_s_page: median(ts.map((t) => (decode * 1000) / t.decodeMs)),
      decode_tok_s_own: ts[0].own ? median(ts.map((t) => (t.own!.decodeTokens * 1000) / t.own!.decodeMs)) : NaN,
      cpu_per_wall: ts[0].cpuPerWall === undefined ? NaN : median(ts.map((t) => t.cpuPerWall!)),
      foreign_cores: median(ts.map((t) => t.foreign)),
    };
  });
  process.stdout.write(`${JSON.stringify({ gguf, length, reps, decode, threads, rows }, null, 1)}\n`);
}

runMain(main);

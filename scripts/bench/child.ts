/**
 * One benchmark process (spawned by scripts/bench/bench.ts, one per model and driver, so that peak memory
 * is per process and transformers.js gets a fresh module graph):
 *   node --import tsx scripts/bench/child.ts JOB.json
 * Prints one JSON object (ChildResult) on stdout; progress on stderr.
 *
 * `time` jobs interleave the rows within each repetition (rotating their order), so that a noisy
 * neighbour slows every row alike; `memory` jobs run one row once and report the process's peak RSS.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SequenceState } from '../../src/engine/caches.js';
import { decodeLoop, nextStep } from '../../src/engine/decode-loop.js';
import { argmax } from '../../src/engine/logits.js';
import type { LoadedModel } from '../../src/engine/model.js';
import type { ModelConfig } from '../../src/model/config.js';
import { parseSchedule, type Schedule } from '../../src/engine/policy.js';
import { createGraphSession, exposeRuntimeForPeers } from '../../src/runtime/onnx-runtime.js';
import { threadCpuMs } from '../lib/clock.js';
import { benchDecode } from './decode.js';
import { MonolithicDecoder } from './monolithic.js';
import { GraphBuilder } from '../../src/shards/onnx-builder.js';
import { initNodeRuntime, loadModelFromDir, readBytes } from '../lib/node-env.js';

export type RowName = 'dense' | 'lazy' | 'lazy-aggr' | 'monolithic' | 'transformers.js';

export interface ChildJob {
  mode: 'time' | 'memory';
  shards: string;
  hfRoot: string;
  hfName: string;
  rows: RowName[];
  lengths: number[];
  reps: number;
  decode: number;
  /** length -> prompt token ids */
  prompts: Record<string, number[]>;
  /** row -> schedule spec, for the lazy rows */
  schedules: Partial<Record<RowName, string>>;
}

export interface Trial {
  /** wall-clock and on-CPU (this thread) time to the first token's logits, prompt ids in hand */
  ttftMs: number;
  ttftCpuMs: number;
  /** `decode` further tokens, greedy */
  decodeMs: number;
  decodeCpuMs: number;
  tokens: number[];
  /** engine rows: query rows per layer at prefill */
  computedPerLayer?: number[];
  /** engine rows: query rows computed over all layers and decode steps (dense: layers x steps) */
  decodeRows?: number;
  flops?: number;
}

export interface RowResult {
  row: RowName;
  length: number;
  trials: Trial[];
}

export interface ChildResult {
  rows: RowResult[];
  loadRssMb: number;
  peakRssMb: number;
}

type Runner = (
  prompt: number[],
  decode: number,
  stop?: readonly number[],
) => Promise<Trial & { promptTokens?: number }>;

export function engineRunner(model: LoadedModel, schedule: Schedule | null): Runner {
  return async (prompt, decode, stop) => {
    // Text prompts: a window signal ranks by the prompt's end (a chat prompt's question is not known here).
    const loop = decodeLoop(model, new SequenceState(model.config), prompt, { schedule });
    const [c0, t0] = [threadCpuMs(), performance.now()];
    const first = await nextStep(loop);
    const [ttftMs, ttftCpuMs] = [performance.now() - t0, threadCpuMs() - c0];
    const [c1, t1] = [threadCpuMs(), performance.now()];
    const { tokens, steps } = await benchDecode(loop, first, decode, stop);
    const [decodeMs, decodeCpuMs] = [performance.now() - t1, threadCpuMs() - c1];
    return {
      ttftMs,
      ttftCpuMs,
      decodeMs,
      decodeCpuMs,
      tokens,
      computedPerLayer: first.stats.computedPerLayer,
      flops: first.stats.flops,
      decodeRows: steps.reduce((n, s) => n + s.computedPerLayer.reduce((a, b) => a + b, 0), 0),
      promptTokens: prompt.length,
    };
  };
}

async function monolithicRunner(job: ChildJob, config: ModelConfig): Promise<Runner> {
  const session = await createGraphSession('monolithic', readBytes(join(job.hfRoot, job.hfName, 'onnx', 'model.onnx')));
  const mono = new MonolithicDecoder(session, config);
  return async (prompt, decode) => {
    mono.reset();
    const [c0, t0] = [threadCpuMs(), performance.now()];
    let logits = await mono.step(prompt);
    const [ttftMs, ttftCpuMs] = [performance.now() - t0, threadCpuMs() - c0];
    const tokens: number[] = [];
    const [c1, t1] = [threadCpuMs(), performance.now()];
    for (let i = 0; i < decode; i++) {
      tokens.push(argmax(logits));
      logits = await mono.step([tokens[i]]);
    }
    const [decodeMs, decodeCpuMs] = [performance.now() - t1, threadCpuMs() - c1];
    return { ttftMs, ttftCpuMs, decodeMs, decodeCpuMs, tokens };
  };
}

/**
 * transformers.js as a user runs it: AutoModelForCausalLM from local files only, greedy generate()
 * with a streamer whose put() timestamps each token. Runs on this process's onnxruntime-web (wasm,
 * one thread) through exposeRuntimeForPeers, so the runtime is the engine's.
 */
async function transformersRunner(
  job: Pick<ChildJob, 'hfRoot' | 'hfName'>,
  dtype: 'fp32' | 'q8' | 'q4' = 'fp32',
): Promise<Runner> {
  exposeRuntimeForPeers((path) => readBytes(path));
  const T = await import('@huggingface/transformers');
  T.env.allowRemoteModels = false;
  T.env.allowLocalModels = true;
  T.env.localModelPath = job.hfRoot;
  T.env.useWasmCache = false;
  const model = await T.AutoModelForCausalLM.from_pretrained(job.hfName, {
    dtype,
    local_files_only: true,
    device: 'auto' as never, // no device list of its own: the exposed runtime's wasm backend
  });
  return async (prompt, decode, stop) => {
    const input_ids = new T.Tensor(
      'int64',
      BigInt64Array.from(prompt, (t) => BigInt(t)),
      [1, prompt.length],
    );
    const attention_mask = new T.Tensor('int64', new BigInt64Array(prompt.length).fill(1n), [1, prompt.length]);
    const stamps: number[] = [];
    const cpu: number[] = [];
    const streamer = new (class extends T.BaseStreamer {
      put(): void {
        stamps.push(performance.now());
        cpu.push(threadCpuMs());
      }
      end(): void {}
    })();
    const [c0, t0] = [threadCpuMs(), performance.now()];
    const out = (await model.generate({
      input_ids,
      attention_mask,
      ...(stop
        ? { max_new_tokens: decode, eos_token_id: [...stop] } // a reply: ends at its stop id, included
        : { max_new_tokens: decode + 1, min_new_tokens: decode + 1 }), // never stop early at EOS: every row decodes the same count
      do_sample: false,
      streamer,
    } as never)) as { tolist(): bigint[][] };
    // put() #0 is the prompt, #1 the first new token (prefill done), #k the k-th.
    // The first `decode` new tokens, as the other rows report them (the last one's logits are timed too).
    const tokens = out
      .tolist()[0]
      .slice(prompt.length, prompt.length + decode)
      .map(Number);
    const last = Math.min(decode, stamps.length - 2); // a reply that stopped early has fewer stamps
    const promptTokens = Number(input_ids.dims[1]);
    return {
      ttftMs: stamps[1] - t0,
      ttftCpuMs: cpu[1] - c0,
      decodeMs: stamps[last + 1] - stamps[1],
      decodeCpuMs: cpu[last + 1] - cpu[1],
      tokens,
      promptTokens,
    };
  };
}

/**
 * `child.ts --serve SHARDS CONTEXT SCHEDULE` (the engine rows: dense, lazy with SCHEDULE) or
 * `--serve-transformers ...` (one transformers.js row) as a line-protocol peer
 * (scripts/bench/peers/engine.ts), so that the bench can interleave them with processes it does not
 * own (llama.cpp, a browser). One JSON request per stdin line:
 * {"cmd": "run", "row": NAME, "prompt": [ids], "decode": N, "stop": [ids]?} -> Trial.
 */
async function serve(runners: Record<string, Runner>): Promise<void> {
  const reply = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
  reply({ ready: true, rows: Object.keys(runners) });
  let buf = '';
  for await (const chunk of process.stdin) {
    buf += chunk;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (!line) continue;
      const req = JSON.parse(line) as { cmd: string; row: string; prompt: number[]; decode: number; stop?: number[] };
      if (req.cmd === 'quit') return;
      try {
        const run = runners[req.row];
        if (!run) throw new Error(`unknown row ${req.row}`);
        reply({
          ...(await run(req.prompt, req.decode, req.stop)),
          peakRssMb: (process.resourceUsage().maxRSS * 1024) / 2 ** 20,
        });
      } catch (e) {
        reply({ error: (e as Error).message });
      }
    }
  }
}

async function main(): Promise<void> {
  if (process.argv[2] === '--serve') {
    const [shards, contextTokens, schedule] = process.argv.slice(3);
    initNodeRuntime();
    const model = await loadModelFromDir(shards, { contextTokens: Number(contextTokens) });
    return serve({ dense: engineRunner(model, null), lazy: engineRunner(model, parseSchedule(schedule)) });
  }
  if (process.argv[2] === '--serve-transformers') {
    // `--serve-transformers HF_ROOT HF_NAME DTYPE`: transformers.js alone in its process, on our
    // onnxruntime-web, which it looks for only once a first session exists (a one-node graph).
    const [hfRoot, hfName, dtype] = process.argv.slice(3);
    initNodeRuntime();
    const probe = new GraphBuilder('probe');
    probe.output(probe.op('Identity', [probe.input('x', 'float32', [1])]), 'y', 'float32', [1]);
    await createGraphSession('probe', probe.toBytes());
    return serve({
      [`transformers.js-${dtype}`]: await transformersRunner({ hfRoot, hfName }, dtype as 'fp32' | 'q8' | 'q4'),
    });
  }
  const job = JSON.parse(readFileSync(process.argv[2], 'utf8')) as ChildJob;
  const log = (m: string) => process.stderr.write(`  ${m}\n`);
  initNodeRuntime();
  const config = (JSON.parse(readFileSync(join(job.shards, 'manifest.json'), 'utf8')) as { config: ModelConfig })
    .config;
  // Only processes that time an engine row hold the per-layer model (peak memory is per process).
  const engineRows = job.rows.filter((r) => r === 'dense' || r === 'lazy' || r === 'lazy-aggr');
  const model = engineRows.length ? await loadModelFromDir(job.shards) : null;
  const runners = new Map<RowName, Runner>();
  for (const row of job.rows) {
    if (row === 'dense') runners.set(row, engineRunner(model!, null));
    else if (row === 'lazy' || row === 'lazy-aggr')
      runners.set(row, engineRunner(model!, parseSchedule(job.schedules[row]!)));
    else if (row === 'monolithic') runners.set(row, await monolithicRunner(job, config));
    else {
      // transformers.js looks for a host runtime only when it is imported, after our first session.
      if (!model && !runners.has('monolithic'))
        await createGraphSession('probe', readBytes(join(job.shards, 'embed.onnx')));
      runners.set(row, await transformersRunner(job));
    }
  }
  const loadRssMb = process.memoryUsage().rss / 2 ** 20;
  const results: RowResult[] = [];
  // Warm-up. A fresh process runs the first ~2000 session runs up to 20x slower (V8 compiles hot
  // wasm functions a second time, optimised, only after they have run for a while; the JS glue is
  // JIT-compiled too), so every row first does 30 short prefill+decode runs.
  const warm = job.prompts[String(job.lengths[0])].slice(0, 128);
  if (job.mode === 'time') for (let i = 0; i < 30; i++) for (const [, run] of runners) await run(warm, 16);

  for (const length of job.lengths) {
    const prompt = job.prompts[String(length)];
    const byRow = new Map<RowName, Trial[]>(job.rows.map((r) => [r, []]));
    if (job.mode === 'time') for (const [, run] of runners) await run(prompt, 8); // warm-up at this size
    const reps = job.mode === 'memory' ? 1 : job.reps;
    for (let rep = 0; rep < reps; rep++) {
      const order = job.rows.map((_, i) => job.rows[(i + rep) % job.rows.length]);
      for (const row of order) {
        const trial = await runners.get(row)!(prompt, job.decode);
        byRow.get(row)!.push(trial);
        log(
          `${row.padEnd(15)} len ${String(length).padStart(4)} rep ${rep + 1}/${reps}: TTFT ${trial.ttftMs.toFixed(1)} ms ` +
            `(cpu ${trial.ttftCpuMs.toFixed(1)}), decode ${((job.decode * 1000) / trial.decodeCpuMs).toFixed(1)} tok/s (cpu)`,
        );
      }
    }
    for (const [row, trials] of byRow) results.push({ row, length, trials });
  }
  const peakRssMb = (process.resourceUsage().maxRSS * 1024) / 2 ** 20;
  const out: ChildResult = { rows: results, loadRssMb, peakRssMb };
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((e: Error) => {
  process.stderr.write(`bench child failed: ${e.stack ?? e.message}\n`);
  process.exit(1);
});

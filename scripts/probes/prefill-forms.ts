/**
 * Weight-kernel forms of the served GGUF side by side: fidelity against the exact-weights fixtures at 512 and
 * 2048 tokens, and the dense prefill's time, in one process (issue 27):
 *
 *   LAZY_EDGE_MEMORY_BUDGET_MB=off flock /tmp/lazy-edge-cpu.lock node --import tsx scripts/probes/prefill-forms.ts \
 *     --kernels dequant,attn=row,ffn=row,head=dequant [--tokens 512,2048] [--kl p512,p2048] [--json FILE]
 *
 * Each kernel string is built in memory (buildGgufShards, head in 2 parts), loaded, and measured: mean KL of the
 * fixture's top-32 + rest bucket (test/support/smollm2.ts bucketKl) over each named prompt's positions
 * (test/fixtures/smollm2/logits-exact.json: p512 71 positions, p2048 80), top-1 agreement, then one dense
 * prefill of each --tokens length of lgpl-2.1.txt: wall and on-CPU ms. Kernels alternate within one run, so
 * ratios between them share the machine's load; the load average is printed at each measurement.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { SequenceState } from '../../src/engine/caches.js';
import { loadModel, type LoadedModel } from '../../src/engine/model.js';
import { runStep } from '../../src/engine/step.js';
import { parseGgufKernels } from '../../src/model/quant.js';
import { buildGgufShards } from '../../src/shards/build-shards.js';
import { wasmHeapBytes } from '../../src/runtime/onnx-runtime.js';
import { bucketKl, fixture, logitsAt, type ChatFixture, type LogitsFixture } from '../../test/support/smollm2.js';
import { generate } from '../../src/engine/generate.js';
import { argmax, logSoftmax } from '../../src/engine/logits.js';
import { initNodeRuntime, REPO_ROOT } from '../lib/node-env.js';
import { streamOfLength } from '../lib/prompts.js';
import { locateServedGguf } from '../lib/served-model.js';
import { sourceFromGguf } from '../lib/shard-tasks.js';
import { buildMonolithicGraph, MonolithicDecoder } from '../bench/monolithic.js';
import { ggufCheckpoint } from '../bench/peers/smol-export.js';
import { int8IntegerLinear } from '../../src/shards/quant-linear.js';
import { createGraphSession } from '../../src/runtime/onnx-runtime.js';

const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const log = (m: string) => process.stderr.write(`[prefill-forms] ${m}\n`);

async function main() {
  const { values } = parseArgs({
    options: {
      kernels: { type: 'string', default: 'dequant' },
      tokens: { type: 'string', default: '512,2048' },
      kl: { type: 'string', default: 'p512,p2048' },
      json: { type: 'string' },
      // also the transformers.js peer's graph: our monolithic export (scripts/bench/monolithic.ts) with
      // int8IntegerLinear (q8), in this process, through MonolithicDecoder as transformers.js feeds it
      mono: { type: 'boolean', default: false },
      // greedy decode steps after each prefill: on-CPU ms a token
      decode: { type: 'string', default: '0' },
      // the 8 reference chat replies (test/fixtures/smollm2/chat-greedy.json): where each departs from the exact one
      chat: { type: 'boolean', default: false },
    },
  });
  initNodeRuntime();
  const exact = fixture<LogitsFixture>('logits-exact.json');
  const source = await sourceFromGguf((await locateServedGguf()).path, 'smollm2-forms');
  const text = readFileSync(join(REPO_ROOT, '../shared/data/lgpl-2.1.txt'), 'utf8');
  const results = [];
  let firstTokenizer: LoadedModel['tokenizer'] | undefined;
  for (const k of values.kernels.split(';')) {
    const r = parseGgufKernels(k);
    if ('error' in r) throw new Error(r.error);
    const built = await buildGgufShards({ ...source, kernels: r.kernels, headParts: 2 });
    const model: LoadedModel = await loadModel(JSON.stringify(built.manifest), async (f) => built.files.get(f)!, {
      memoryBudgetBytes: Infinity,
      contextTokens: 4096,
    });
    firstTokenizer ??= model.tokenizer;
    const row: Record<string, unknown> = {
      kernel: built.manifest.quant.kernel,
      heapAfterLoadMb: (wasmHeapBytes() ?? 0) / 2 ** 20,
    };
    // warm-up
    await runStep(model, new SequenceState(model.config), streamOfLength(model.tokenizer, text, 16), {
      schedule: null,
    });
    for (const n of values.tokens.split(',').filter(Boolean).map(Number)) {
      const prompt = streamOfLength(model.tokenizer, text, n);
      const l0 = load();
      const c0 = process.cpuUsage();
      const t = performance.now();
      const seq = new SequenceState(model.config);
      let logits = (await runStep(model, seq, prompt, { schedule: null })).logits;
      const ms = performance.now() - t;
      const c = process.cpuUsage(c0);
      row[`prefill${n}`] = { ms: Math.round(ms), cpuMs: Math.round((c.user + c.system) / 1000), load: l0 };
      const steps = Number(values.decode);
      if (steps > 0) {
        const d0 = process.cpuUsage();
        for (let i = 0; i < steps; i++)
          logits = (await runStep(model, seq, [argmax(logits)], { schedule: null })).logits;
        const d = process.cpuUsage(d0);
        const perToken = (d.user + d.system) / 1000 / steps;
        row[`decode${n}`] = { cpuMsPerToken: perToken, tokPerS: 1000 / perToken };
        log(
          `${row.kernel}: decode after ${n}: ${perToken.toFixed(1)} ms on-CPU a token (${(1000 / perToken).toFixed(1)} tok/s)`,
        );
      }
      log(
        `${row.kernel}: prefill ${n}: ${ms.toFixed(0)} ms wall, ${((c.user + c.system) / 1000).toFixed(0)} ms on-CPU (load ${l0})`,
      );
    }
    for (const name of values.kl.split(',').filter(Boolean)) {
      const p = exact.prompts.find((x) => x.name === name)!;
      const ours = (await logitsAt(model, p.ids, p.positions)).map(logSoftmax);
      const kls = ours.map((lp, i) => bucketKl(p.top_ids[i], p.top_logprobs[i], lp));
      const mean = kls.reduce((a, b) => a + b, 0) / kls.length;
      const top1 = ours.filter((lp, i) => argmax(lp) === p.top_ids[i][0]).length;
      row[name] = { meanKl: mean, maxKl: Math.max(...kls), top1: `${top1}/${ours.length}` };
      log(
        `${row.kernel}: ${name}: mean KL ${mean.toExponential(2)}, max ${Math.max(...kls).toExponential(2)}, top-1 ${top1}/${ours.length}`,
      );
    }
    if (values.chat) {
      const chat = fixture<ChatFixture>('chat-greedy.json');
      const departs: string[] = [];
      let ok = 0;
      for (const c of chat.prompts) {
        const r = await generate(model, new SequenceState(model.config), c.prompt_ids, {
          maxTokens: chat.max_tokens,
          sampler: { temperature: 0, topP: 1, topK: 0, seed: 1 },
          schedule: null,
        });
        const ref = c.exact.ids.filter((t) => !chat.end_ids.includes(t));
        const upTo = c.first_near_tie ?? ref.length;
        const at = ref.slice(0, upTo).findIndex((t, i) => r.tokens[i] !== t);
        if (at < 0) ok++;
        else departs.push(`"${c.messages[0].content.slice(0, 24)}" at ${at} (exact margin ${c.exact.margins[at]})`);
      }
      row.chat = { equalUpToNearTie: `${ok}/${chat.prompts.length}`, departs };
      log(
        `${row.kernel}: chat ${ok}/${chat.prompts.length} equal up to their near-tie; departs: ${departs.join('; ') || 'none'}`,
      );
    }
    results.push(row);
    for (const s of [...model.layers, ...model.head.map((h) => h.session)]) await s.release();
  }
  if (values.mono) {
    const ck = await ggufCheckpoint((await locateServedGguf()).path);
    const session = await createGraphSession('mono-q8', buildMonolithicGraph(ck, int8IntegerLinear));
    const mono = new MonolithicDecoder(session, ck.config);
    const tok = firstTokenizer!;
    const row: Record<string, unknown> = { kernel: 'transformers.js q8 graph (monolithic, integer)' };
    mono.reset();
    await mono.step(streamOfLength(tok, text, 16));
    for (const n of values.tokens.split(',').filter(Boolean).map(Number)) {
      const prompt = streamOfLength(tok, text, n);
      mono.reset();
      const l0 = load();
      const c0 = process.cpuUsage();
      const t = performance.now();
      let logits = await mono.step(prompt);
      const ms = performance.now() - t;
      const c = process.cpuUsage(c0);
      row[`prefill${n}`] = { ms: Math.round(ms), cpuMs: Math.round((c.user + c.system) / 1000), load: l0 };
      const steps = Number(values.decode);
      if (steps > 0) {
        const d0 = process.cpuUsage();
        for (let i = 0; i < steps; i++) logits = await mono.step([argmax(logits)]);
        const d = process.cpuUsage(d0);
        const perToken = (d.user + d.system) / 1000 / steps;
        row[`decode${n}`] = { cpuMsPerToken: perToken, tokPerS: 1000 / perToken };
        log(
          `${row.kernel}: decode after ${n}: ${perToken.toFixed(1)} ms on-CPU a token (${(1000 / perToken).toFixed(1)} tok/s)`,
        );
      }
      log(
        `${row.kernel}: prefill ${n}: ${ms.toFixed(0)} ms wall, ${((c.user + c.system) / 1000).toFixed(0)} ms on-CPU (load ${l0})`,
      );
    }
    results.push(row);
    await session.release();
  }
  if (values.json) writeFileSync(values.json, JSON.stringify({ date: new Date().toISOString(), results }, null, 2));
}

await main();

/**
 * npm run decode-profile -- [--model DIR] [--tokens 2048] [--decode 32] [--windows 8,32] [--schedules dense,default,<spec>...] [--text FILE] [--json]
 *
 * Where a decode step's time goes, dense against lazy schedules, side by side on one prompt (text:
 * `default` is the text default, whose window signal decodes as the chat default's question does,
 * by the scores the prefill remembered): for each
 * schedule, a prefill of --tokens tokens of text, then --decode greedy steps. Per schedule: decode
 * tokens/s; per step on average the tokens revived from the Aux Cache and the query rows computed
 * (over all layers); and the step's time split into the layer graphs' runs, the embedding and head
 * runs, and what remains on the JavaScript side (selection, realignment, gathers and copies). The
 * schedules run interleaved, one decode step each in turn, so the machine's load falls on all alike.
 * --windows N,M also reports tokens/s over the first N (M, ...) steps: with LazyLLM's semantics the
 * first steps after a pruned prefill revive most of what it skipped, so the rate depends on the reply
 * length; `end_to_end_ms` (prefill + every step) is what a whole reply costs, which the paper's
 * "each token computed at most once per layer" bounds by dense's.
 * Progress on stderr; --json prints one object on stdout.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { SequenceState } from '../../src/engine/caches.js';
import { decodeLoop, nextStep, type DecodeStep } from '../../src/engine/decode-loop.js';
import type { LoadedModel } from '../../src/engine/model.js';
import {
  defaultSchedule,
  formatSchedule,
  parseSchedule,
  validateSchedule,
  type Schedule,
} from '../../src/engine/policy.js';
import { EmbeddingTable } from '../../src/model/embedding-table.js';
import type { GraphSession } from '../../src/runtime/onnx-runtime.js';
import { fail, loadModelFromDir, REPO_ROOT, runMain } from '../lib/node-env.js';
import { streamOfLength } from '../lib/prompts.js';
import { servedShardsDir } from '../lib/served-model.js';

const t0 = Date.now();
const progress = (m: string) =>
  process.stderr.write(`[decode-profile ${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${m}\n`);

/** Wraps sessions so that the time spent inside their runs is added to `clock[key]`. */
function timed(s: GraphSession, clock: Record<string, number>, key: string): GraphSession {
  return {
    name: s.name,
    release: () => s.release(),
    async run(feeds) {
      const t = performance.now();
      try {
        return await s.run(feeds);
      } finally {
        clock[key] += performance.now() - t;
      }
    },
  };
}

/** The same table, its lookups timed (the embedding runs in plain code, no session). */
function timedTable(t: EmbeddingTable, clock: Record<string, number>, key: string): EmbeddingTable {
  const out = new EmbeddingTable(t.parts, t.dim);
  out.lookup = (ids) => {
    const s = performance.now();
    try {
      return t.lookup(ids);
    } finally {
      clock[key] += performance.now() - s;
    }
  };
  return out;
}

async function main() {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      tokens: { type: 'string', default: '2048' },
      decode: { type: 'string', default: '32' },
      windows: { type: 'string', default: '' },
      schedules: { type: 'string', default: 'dense,default,default+revive:8,default+revive:0' },
      text: { type: 'string', default: resolve(REPO_ROOT, '../shared/data/mpl-2.0.txt') },
      json: { type: 'boolean', default: false },
    },
  });
  const tokens = Number(values.tokens);
  const decode = Number(values.decode);
  if (!Number.isInteger(tokens) || tokens < 2 || !Number.isInteger(decode) || decode < 1)
    fail('--tokens and --decode take positive integers');
  const windows = values.windows === '' ? [] : values.windows.split(',').map(Number);
  for (const w of windows)
    if (!(Number.isInteger(w) && w >= 1 && w <= decode))
      fail(`--windows: each must be an integer from 1 to --decode (${decode}), got ${values.windows}`);
  let text: string;
  try {
    text = readFileSync(values.text, 'utf8');
  } catch (e) {
    fail(`--text ${values.text}: ${(e as Error).message}`);
  }
  const base = await loadModelFromDir(values.model ?? servedShardsDir(), {
    contextTokens: tokens + decode + 1,
    memoryBudgetBytes: Infinity,
  });
  const clock = { layers: 0, vocab: 0 };
  const model: LoadedModel = {
    ...base,
    layers: base.layers.map((s) => timed(s, clock, 'layers')),
    embed: base.embed && timedTable(base.embed, clock, 'vocab'),
    head: base.head.map((p) => ({ ...p, session: timed(p.session, clock, 'vocab') })),
  };
  const L = model.config.nLayers;
  const def = formatSchedule(defaultSchedule(L));
  const schedules: { name: string; schedule: Schedule | null }[] = values.schedules.split(',').map((s) => {
    const spec = s.trim().replace(/^default/, def);
    if (spec === 'dense') return { name: 'dense', schedule: null };
    try {
      return {
        name: s.trim().replace(/^default/, `default (${def})`),
        schedule: validateSchedule(parseSchedule(spec.replace(/\+/g, ',')), L),
      };
    } catch (e) {
      fail(`--schedules: ${s}: ${(e as Error).message}`);
    }
  });
  const prompt = streamOfLength(model.tokenizer, text, tokens);
  const runs = schedules.map((s) => ({
    loop: decodeLoop(model, new SequenceState(model.config), prompt, { schedule: s.schedule }),
    /** the last step: its token is the next one fed */
    at: null as DecodeStep | null,
    steps: [] as { ms: number; layersMs: number; vocabMs: number; revived: number; computed: number }[],
    prefillMs: 0,
    out: [] as number[],
  }));
  for (const [k, s] of schedules.entries()) {
    progress(`${s.name}: prefill ${tokens} tokens`);
    runs[k].at = await nextStep(runs[k].loop);
    runs[k].prefillMs = runs[k].at.stats.ms;
  }
  for (let step = 0; step < decode; step++) {
    for (const run of runs) {
      clock.layers = clock.vocab = 0;
      run.out.push(run.at!.token);
      run.at = await nextStep(run.loop);
      const { ms, revived, computedPerLayer } = run.at.stats;
      run.steps.push({
        ms,
        layersMs: clock.layers,
        vocabMs: clock.vocab,
        revived,
        computed: computedPerLayer.reduce((a, b) => a + b, 0),
      });
    }
    if ((step + 1) % 8 === 0) progress(`decoded ${step + 1}/${decode} steps in every schedule`);
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const rows = schedules.map((s, k) => {
    const st = runs[k].steps;
    const total = st.reduce((a, x) => a + x.ms, 0);
    return {
      schedule: s.name,
      prefill_ms: runs[k].prefillMs,
      decode_tok_s: (st.length * 1000) / total,
      decode_tok_s_first: Object.fromEntries(
        windows.map((w) => [w, (w * 1000) / st.slice(0, w).reduce((a, x) => a + x.ms, 0)]),
      ),
      end_to_end_ms: runs[k].prefillMs + total,
      step_ms: mean(st.map((x) => x.ms)),
      layer_runs_ms: mean(st.map((x) => x.layersMs)),
      vocab_runs_ms: mean(st.map((x) => x.vocabMs)),
      js_side_ms: mean(st.map((x) => x.ms - x.layersMs - x.vocabMs)),
      revived_per_step: mean(st.map((x) => x.revived)),
      revived_first_8: st.slice(0, 8).map((x) => x.revived),
      query_rows_per_step: mean(st.map((x) => x.computed)),
      same_tokens_as_first: runs[k].out.every((t, i) => t === runs[0].out[i]),
    };
  });
  const d = rows[0];
  for (const r of rows) {
    progress(
      `${r.schedule}: decode ${r.decode_tok_s.toFixed(1)} tok/s (${(r.decode_tok_s / d.decode_tok_s).toFixed(2)}x ${d.schedule}); step ${r.step_ms.toFixed(1)} ms = layers ${r.layer_runs_ms.toFixed(1)} + embed/head ${r.vocab_runs_ms.toFixed(1)} + JS ${r.js_side_ms.toFixed(1)}; ` +
        `revived ${r.revived_per_step.toFixed(1)}/step (first steps ${r.revived_first_8.join(' ')}), ${r.query_rows_per_step.toFixed(0)} query rows/step; ` +
        `${Object.entries(r.decode_tok_s_first)
          .map(([w, v]) => `first ${w}: ${v.toFixed(1)} tok/s; `)
          .join('')}prefill + decode ${(r.end_to_end_ms / 1000).toFixed(2)} s`,
    );
  }
  const out = {
    model: model.manifest.name,
    quant: `${model.quant.format}/${model.quant.kernel}`,
    kv_format: model.config.kvFormat,
    tokens,
    decode,
    windows,
    rows,
  };
  process.stdout.write(values.json ? `${JSON.stringify(out)}\n` : `${JSON.stringify(out, null, 2)}\n`);
}

runMain(main);

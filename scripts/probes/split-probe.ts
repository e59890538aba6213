/**
 * npx tsx scripts/probes/split-probe.ts [--groups 1,2,8+2] [--tokens 2000] [--max-tokens 32] [--repeat 2] [--model NAME] [--context N]
 *                                [--kv f32|f16|int8] [--embed-in-front] [--modes dense,lazy] [--data FILE[,FILE...]]
 *                                [--schedule SPEC] [--var NAME=VALUE ...] [--plan-only]
 *
 * The served model split into layer groups (LAYER_GROUPS; "G+H" adds H classifier objects,
 * HEAD_GROUPS) against unsplit, served locally (scripts/serve.ts): for each split, starts the server on 127.0.0.1 with that split, streams one long chat prompt
 * (a question after ~N tokens of ../shared/data/apache-2.0.txt, or of the --data files one after
 * the other; the Apache text holds ~2500 tokens, so 8k prompts name more files) to every split in
 * turn, each served by its own server all along, dense and lazy interleaved (the first round a warm-up), and reports TTFT on the client clock, the server's prefill time, decode
 * tokens/s, the bytes that crossed group boundaries per prefill and per decode step
 * (lazy_stats.split), workerd's peak resident memory, and the plan's estimated bytes per object
 * (src/engine/layer-group.ts planSplit, from the manifest and config). --plan-only prints the
 * fewest objects under 128 MB for each KV format at 2k/4k/8k tokens and exits. Run it under the
 * measurement lock: flock /tmp/lazy-edge-measure.lock npx tsx scripts/probes/split-probe.ts ...
 * --schedule sets the lazy runs' pruning schedule (the engine's spec, e.g. "bos,min:128,4:0.4,12:0.5,20:0.5";
 * default: the model's default schedule).
 * Progress on stderr; one JSON object on stdout.
 */
import { readFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fewestGroups, planSplit } from '../../src/engine/layer-group.js';
import type { KvFormat } from '../../src/engine/kv-rows.js';
import { MB } from '../../src/engine/memory-budget.js';
import { parseManifest, quantOf } from '../../src/model/manifest.js';
import { fail, progress, REPO_ROOT, runMain, shardsDir } from '../lib/node-env.js';
import { licenseQuestion, streamChat } from './chat-stream.js';
import { findWorkerds, residentBytes, startWranglerDev, waitReady } from '../lib/wrangler-dev.js';

interface Run {
  groups: string;
  mode: 'dense' | 'lazy';
  ttft_ms: number;
  prompt_tokens: number;
  completion_tokens: number;
  prefill_ms: number;
  decode_tokens_per_s: number;
  prefill_boundary_bytes: number | null;
  decode_boundary_bytes_per_step: number | null;
  /** SSE comment lines the server sent while prefilling (keep-alives: src/worker/job/keep-alive.ts), and the longest silence before the first token */
  keepalive_comments: number;
  longest_silence_ms: number;
  text: string;
}

async function streamOnce(url: string, body: object, groups: string, mode: Run['mode']): Promise<Run> {
  const { ttft_ms: ttft, text, stats, usage, comments, longest_silence_ms } = await streamChat(url, body);
  return {
    groups,
    mode,
    ttft_ms: ttft,
    prompt_tokens: usage.prompt_tokens,
    completion_tokens: usage.completion_tokens,
    prefill_ms: stats.prefill_ms,
    decode_tokens_per_s: stats.decode_tokens_per_s,
    prefill_boundary_bytes: stats.split?.prefill_boundary_bytes ?? null,
    decode_boundary_bytes_per_step: stats.split?.decode_boundary_bytes_per_step ?? null,
    keepalive_comments: comments,
    longest_silence_ms,
    text,
  };
}

const ratio = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? null : a / b);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mib = (b: number) => Math.round((b / MB) * 10) / 10;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      groups: { type: 'string', default: '1,2' },
      tokens: { type: 'string', default: '2000' },
      'max-tokens': { type: 'string', default: '32' },
      repeat: { type: 'string', default: '2' },
      model: { type: 'string', default: 'smollm2-135m-instruct' },
      context: { type: 'string', default: '2048' },
      data: { type: 'string', default: resolve(REPO_ROOT, '../shared/data/apache-2.0.txt') },
      'plan-only': { type: 'boolean', default: false },
      kv: { type: 'string', default: 'f32' },
      'embed-in-front': { type: 'boolean', default: false },
      modes: { type: 'string', default: 'dense,lazy' },
      var: { type: 'string', multiple: true, default: [] },
      schedule: { type: 'string' },
    },
  });
  const groupsList = values.groups!.split(',');
  const splitOf = (spec: string) => {
    const [g, h = '0'] = spec.split('+');
    const G = Number(g);
    const H = Number(h);
    if (!Number.isInteger(G) || G < 1 || !Number.isInteger(H) || H < 0)
      fail(`--groups ${values.groups}: "G" or "G+H" items (integers), comma-separated`);
    return { G, H };
  };
  groupsList.forEach(splitOf);
  const context = Number(values.context);
  const front = values['embed-in-front']!;
  const modes = values.modes!.split(',') as Run['mode'][];
  if (!modes.every((m) => m === 'dense' || m === 'lazy')) fail(`--modes ${values.modes}: dense and/or lazy`);
  const extraVars = Object.fromEntries(
    values.var!.map((kv) => {
      const i = kv.indexOf('=');
      if (i < 1) fail(`--var ${kv}: NAME=VALUE`);
      return [kv.slice(0, i), kv.slice(i + 1)];
    }),
  );
  const manifest = parseManifest(readFileSync(join(shardsDir(values.model!), 'manifest.json'), 'utf8'));
  const quant = quantOf(manifest);
  const headRows = manifest.files.head.map((p) => p.rows);
  const plans = Object.fromEntries(
    [2048, 4096, 8192].map((ctx) => {
      const cfg = {
        ...manifest.config,
        seqLen: Math.min(ctx, manifest.config.seqLen),
        kvFormat: values.kv as KvFormat,
      };
      const fit = fewestGroups(cfg, quant, headRows, 128 * MB, front);
      return [
        ctx,
        {
          fewest_for_128mb:
            fit.groups === null
              ? { reason: fit.reason }
              : {
                  layer_groups: fit.groups,
                  head_groups: fit.heads,
                  max_object_mb: mib(Math.max(...fit.plan.map((p) => p.bytes.total))),
                },
          per_object_mb: Object.fromEntries(
            groupsList.map((spec) => [
              spec,
              planSplit(cfg, quant, headRows, splitOf(spec).G, splitOf(spec).H, front).map((p) => mib(p.bytes.total)),
            ]),
          ),
        },
      ];
    }),
  );
  if (values['plan-only']) {
    const table = Object.fromEntries(
      (['f32', 'f16', 'int8'] as const).map((kvFormat) => [
        kvFormat,
        Object.fromEntries(
          [2048, 4096, 8192].map((ctx) => {
            const fit = fewestGroups(
              { ...manifest.config, seqLen: Math.min(ctx, manifest.config.seqLen), kvFormat },
              quant,
              headRows,
              128 * MB,
              front,
            );
            return [
              ctx,
              fit.groups === null
                ? { reason: fit.reason }
                : {
                    layer_groups: fit.groups,
                    head_groups: fit.heads,
                    max_object_mb: mib(Math.max(...fit.plan.map((p) => p.bytes.total))),
                    per_object_mb: fit.plan.map((p) => mib(p.bytes.total)),
                  },
            ];
          }),
        ),
      ]),
    );
    process.stdout.write(`${JSON.stringify({ model: manifest.name, quant, budget_mb: 128, fewest_objects: table })}\n`);
    return;
  }
  progress(
    `estimated MB per object (weights as the kernel holds them, KV and Aux at the context, runtime): ${JSON.stringify(plans)}`,
  );

  // --data FILE[,FILE...]: the files one after the other, as long as --tokens needs (~4.4 characters a token)
  const chars = Math.round(Number(values.tokens) * 4.4);
  const text = values
    .data!.split(',')
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n\n')
    .replace(/\s+/g, ' ');
  if (text.length < chars)
    fail(
      `--data ${values.data}: ${text.length} characters, ~${Math.floor(text.length / 4.4)} tokens; --tokens ${values.tokens} needs more (name several files, comma-separated)`,
    );
  const doc = text.slice(0, chars);
  const base = licenseQuestion(manifest.name, doc, Number(values['max-tokens']));
  const runs: Run[] = [];
  const peaks: Record<string, number> = {};
  const load = [loadavg()[0]];
  // Every split is served at once, each by its own server, and the requests go round them in turn
  // (split after split, dense after lazy): a change of load on the shared machine then falls on all
  // of them alike, so their ratios are measured side by side. Idle servers take no CPU.
  const servers: { G: string; dev: Awaited<ReturnType<typeof startWranglerDev>> }[] = [];
  try {
    for (const G of groupsList) {
      const { G: layerGroups, H: heads } = splitOf(G);
      const log = join(tmpdir(), `split-probe-${process.pid}-${G}.log`);
      progress(`LAYER_GROUPS=${G}: starting the local server (log ${log})`);
      // frozen: the bundle and the model's shards as they are now, whatever other work changes in the checkout meanwhile
      const dev = await startWranglerDev(
        join(REPO_ROOT, 'wrangler.toml'),
        log,
        {
          MODEL_NAME: values.model!,
          LAYER_GROUPS: String(layerGroups),
          HEAD_GROUPS: String(heads),
          MEMORY_BUDGET_MB: '1024',
          CONTEXT_TOKENS: String(context),
          KV_FORMAT: values.kv!,
          EMBED_IN_FRONT: front ? '1' : '0',
          ...extraVars,
        },
        { freeze: { models: [values.model!] } },
      );
      servers.push({ G, dev });
      // The playground page: it loads no model (unsplit, GET /v1/models and /healthz load the whole one).
      await waitReady(`${dev.base}/`, dev.child, 120_000);
    }
    for (let i = 0; i <= Number(values.repeat); i++) {
      for (const { G, dev } of servers) {
        for (const mode of modes) {
          const r = await streamOnce(
            dev.base,
            {
              ...base,
              // every run prefills afresh: the prefix cache would serve the repeats
              cache_prompt: false,
              lazy: {
                enabled: mode === 'lazy',
                ...(mode === 'lazy' && values.schedule ? { schedule: values.schedule } : {}),
              },
            },
            G,
            mode,
          );
          progress(
            `G=${G} ${i === 0 ? 'warm-up ' : ''}${mode}: ${r.prompt_tokens} prompt tokens, TTFT ${r.ttft_ms.toFixed(0)} ms (prefill ${r.prefill_ms.toFixed(0)} ms), decode ${r.decode_tokens_per_s.toFixed(1)} tok/s, boundary bytes prefill ${r.prefill_boundary_bytes} / decode step ${r.decode_boundary_bytes_per_step}, ${r.keepalive_comments} keep-alive comments (longest silence ${(r.longest_silence_ms / 1000).toFixed(1)} s), ${JSON.stringify(r.text.slice(0, 60))}`,
          );
          if (i > 0) runs.push(r);
        }
      }
      load.push(loadavg()[0]);
    }
    for (const { G, dev } of servers)
      peaks[G] = findWorkerds(dev.child.pid!).reduce((m, pid) => Math.max(m, residentBytes(pid).hwm), 0);
  } finally {
    for (const { dev } of servers) await dev.stop();
  }
  const summary = groupsList.map((G) => {
    const pick = (mode: Run['mode']) => {
      const rs = runs.filter((r) => r.groups === G && r.mode === mode);
      if (rs.length === 0) return null;
      return {
        ttft_ms: median(rs.map((r) => r.ttft_ms)),
        prefill_ms: median(rs.map((r) => r.prefill_ms)),
        decode_tokens_per_s: median(rs.map((r) => r.decode_tokens_per_s)),
        prefill_boundary_bytes: rs[0].prefill_boundary_bytes,
        decode_boundary_bytes_per_step: rs[0].decode_boundary_bytes_per_step,
        text: rs[0].text,
      };
    };
    return { groups: G, dense: pick('dense'), lazy: pick('lazy'), workerd_peak_rss_mb: mib(peaks[G]) };
  });
  const unsplit = summary.find((s) => s.groups === '1');
  const ratios = unsplit
    ? summary
        .filter((s) => s.groups !== '1')
        .map((s) => ({
          groups: s.groups,
          decode_split_over_unsplit_dense: ratio(s.dense?.decode_tokens_per_s, unsplit.dense?.decode_tokens_per_s),
          decode_split_over_unsplit_lazy: ratio(s.lazy?.decode_tokens_per_s, unsplit.lazy?.decode_tokens_per_s),
          ttft_split_over_unsplit_dense: ratio(s.dense?.ttft_ms, unsplit.dense?.ttft_ms),
          lazy_ttft_speedup_over_split_dense: ratio(s.dense?.ttft_ms, s.lazy?.ttft_ms),
        }))
    : [];
  process.stdout.write(
    `${JSON.stringify({ model: manifest.name, context, prompt_tokens: runs[0]?.prompt_tokens, load_average_1m: load, plans, summary, ratios, runs })}\n`,
  );
}

runMain(main);

/** Benchmark results -> summary rows, a markdown report and an SVG plot. */
import type { ModelConfig } from '../../src/model/config.js';
import type { ChildResult, RowName, Trial } from './child.js';
import { median } from '../lib/stats.js';
import type { BenchModelSpec } from './models.js';
import type { MatMulPeak } from './peak.js';
import type { WorkerdRowResult } from './workerd.js';
import { PALETTE, renderPanels, type Panel } from '../lib/svg-plot.js';

export type SummaryRowName = RowName | 'dense (workerd)' | 'lazy (workerd)';

export interface SummaryRow {
  model: string;
  synthetic: boolean;
  length: number;
  /** prompt longer than the model's trained context (stories260K: 512) */
  beyondContext: boolean;
  row: SummaryRowName;
  schedule: string | null;
  reps: number;
  /**
   * Medians. ttft_ms is wall time; ttft_cpu_ms, the headline, is per repetition the smaller of wall
   * time and the process's CPU time: an upper bound of the main thread's on-CPU time that neither a
   * busy machine (inflates wall) nor V8's background compiler threads (inflate process CPU) distort.
   */
  ttft_ms: number;
  ttft_cpu_ms: number;
  decode_tok_s: number;
  decode_tok_s_wall: number;
  /** dense TTFT / this row's TTFT (CPU), 1 for dense */
  speedup_vs_dense: number;
  /** useful dense FLOPs of the prompt (causal attention counted once) / TTFT (CPU) */
  gflops: number;
  pct_of_peak: number;
  /** query rows per layer at prefill (engine rows) */
  computed_per_layer: number[] | null;
  /** query rows computed per decode step, all layers (engine rows; dense = layer count) */
  rows_per_decode_step: number | null;
  peak_rss_mb: number | null;
  /** greedy decode tokens equal to the dense row's (same model, same prompt) */
  same_tokens_as_dense: boolean | null;
}

/** FLOPs a dense causal prefill of n tokens must do: projections, attention over visible keys, one head row. */
export function usefulPrefillFlops(c: ModelConfig, n: number): number {
  const proj = 2 * (c.dim * (c.dim + 2 * c.kvDim) + c.dim * c.dim + 3 * c.dim * c.hiddenDim);
  const attn = 2 * 2 * c.dim * ((n * (n + 1)) / 2);
  return c.nLayers * (n * proj + attn) + 2 * c.dim * c.vocabSize;
}

export interface ModelRun {
  spec: BenchModelSpec;
  config: ModelConfig;
  schedules: Partial<Record<RowName, string>>;
  time: ChildResult;
  /** row -> { length, peak RSS MB } from the one-row memory processes */
  memory: Partial<Record<RowName, { length: number; peakRssMb: number; loadRssMb: number }>>;
}

const ttftOf = (t: Trial) => Math.min(t.ttftMs, t.ttftCpuMs);

/**
 * Greedy tokens equal up to dense's first EOS (id 2): the transformers.js row decodes with
 * min_new_tokens, which forbids EOS, so it may only differ after one.
 */
function sameUntilEos(dense: number[], other: number[], eos = 2): boolean {
  const end = dense.indexOf(eos);
  const n = end < 0 ? dense.length : end;
  for (let i = 0; i < n; i++) if (dense[i] !== other[i]) return false;
  return true;
}

export function summarize(
  runs: ModelRun[],
  workerd: { model: string; rows: WorkerdRowResult[]; decode: number } | null,
  peak: MatMulPeak,
  decode: number,
): SummaryRow[] {
  const out: SummaryRow[] = [];
  for (const run of runs) {
    const dense = new Map<number, { cpu: number; tokens: number[] }>();
    for (const r of run.time.rows) {
      if (r.row === 'dense') dense.set(r.length, { cpu: median(r.trials.map(ttftOf)), tokens: r.trials[0].tokens });
    }
    for (const r of run.time.rows) {
      const ttftCpu = median(r.trials.map(ttftOf));
      const d = dense.get(r.length);
      const mem = run.memory[r.row];
      const gflops = usefulPrefillFlops(run.config, r.length) / ttftCpu / 1e6;
      out.push({
        model: run.spec.id,
        synthetic: run.spec.synthetic,
        length: r.length,
        beyondContext: !run.spec.synthetic && r.length > run.spec.trainedContext,
        row: r.row,
        schedule: run.schedules[r.row] ?? null,
        reps: r.trials.length,
        ttft_ms: median(r.trials.map((t) => t.ttftMs)),
        ttft_cpu_ms: ttftCpu,
        decode_tok_s: median(r.trials.map((t) => (decode * 1000) / Math.min(t.decodeMs, t.decodeCpuMs))),
        decode_tok_s_wall: median(r.trials.map((t) => (decode * 1000) / t.decodeMs)),
        speedup_vs_dense: d ? d.cpu / ttftCpu : NaN,
        gflops,
        pct_of_peak: (100 * gflops) / peak.gflopsCpu,
        computed_per_layer: r.trials[0].computedPerLayer ?? null,
        rows_per_decode_step: r.trials[0].decodeRows === undefined ? null : r.trials[0].decodeRows / decode,
        peak_rss_mb: mem && mem.length === r.length ? mem.peakRssMb : null,
        same_tokens_as_dense: r.row === 'dense' || !d ? null : sameUntilEos(d.tokens, r.trials[0].tokens),
      });
    }
  }
  if (workerd) {
    const run = runs.find((r) => r.spec.id === workerd.model);
    for (const w of workerd.rows) {
      const node = out.find((o) => o.model === workerd.model && o.length === w.length && o.row === 'dense');
      const gflops = run ? usefulPrefillFlops(run.config, w.length) / Math.min(w.ttftMs, w.ttftCpuMs) / 1e6 : NaN;
      out.push({
        model: workerd.model,
        synthetic: run?.spec.synthetic ?? false,
        length: w.length,
        beyondContext: run ? !run.spec.synthetic && w.length > run.spec.trainedContext : false,
        row: w.row === 'dense' ? 'dense (workerd)' : 'lazy (workerd)',
        schedule: w.row === 'lazy' ? (run?.schedules.lazy ?? null) : null,
        reps: NaN,
        ttft_ms: w.ttftMs,
        ttft_cpu_ms: Math.min(w.ttftMs, w.ttftCpuMs),
        decode_tok_s: (workerd.decode * 1000) / Math.min(w.decodeMs, w.decodeCpuMs),
        decode_tok_s_wall: (workerd.decode * 1000) / w.decodeMs,
        speedup_vs_dense: node ? node.ttft_cpu_ms / Math.min(w.ttftMs, w.ttftCpuMs) : NaN,
        gflops,
        pct_of_peak: (100 * gflops) / peak.gflopsCpu,
        computed_per_layer: null,
        rows_per_decode_step: null,
        peak_rss_mb: null,
        same_tokens_as_dense: node ? null : null,
      });
    }
  }
  return out;
}

const f1 = (v: number) => (Number.isFinite(v) ? v.toFixed(1) : '–');
const f2 = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : '–');

export function markdownTable(rows: SummaryRow[]): string {
  const head =
    '| model | prompt | row | TTFT ms | TTFT ms (wall) | vs dense | decode tok/s | rows / decode step | GFLOP/s ‡ | % of MatMul peak | peak RSS MB § | same tokens as dense |\n' +
    '| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |';
  const lines = rows.map((r) => {
    const prompt = `${r.length}${r.beyondContext ? ' †' : ''}`;
    const row = r.schedule ? `${r.row} \`${r.schedule}\`` : r.row;
    const same = r.same_tokens_as_dense === null ? '' : r.same_tokens_as_dense ? 'yes' : 'no';
    const rows = r.rows_per_decode_step === null ? '' : f1(r.rows_per_decode_step);
    return `| ${r.model}${r.synthetic ? ' (random)' : ''} | ${prompt} | ${row} | ${f1(r.ttft_cpu_ms)} | ${f1(r.ttft_ms)} | ${f2(r.speedup_vs_dense)}x | ${f1(r.decode_tok_s)} | ${rows} | ${f1(r.gflops)} | ${r.row.startsWith('lazy') ? '' : f1(r.pct_of_peak)} | ${r.peak_rss_mb === null ? '' : r.peak_rss_mb.toFixed(0)} | ${same} |`;
  });
  return `${head}\n${lines.join('\n')}`;
}

const ROW_STYLE: Record<string, { color: string; dashed?: boolean }> = {
  dense: { color: PALETTE[0] },
  lazy: { color: PALETTE[1] },
  'lazy-aggr': { color: PALETTE[2] },
  monolithic: { color: PALETTE[3], dashed: true },
  'transformers.js': { color: PALETTE[4], dashed: true },
};

/** TTFT against prompt length per model, and decode speed, log-log. */
export function benchmarkSvg(rows: SummaryRow[], caption: string): string {
  const panels: Panel[] = [];
  const models = [...new Set(rows.map((r) => r.model))];
  // One log-log panel per model and metric, a series per row (the workerd rows are a table-only check).
  const panel = (model: string, title: string, yLabel: string, y: (r: SummaryRow) => number): Panel => {
    const mine = rows.filter((r) => r.model === model && !r.row.includes('workerd'));
    return {
      title,
      xLabel: 'prompt tokens',
      yLabel,
      logX: true,
      logY: true,
      series: [...new Set(mine.map((r) => r.row))].map((n) => ({
        name: n,
        ...ROW_STYLE[n],
        points: mine.filter((r) => r.row === n).map((r) => [r.length, y(r)] as [number, number]),
      })),
    };
  };
  for (const model of models) {
    const synthetic = rows.find((r) => r.model === model)?.synthetic;
    panels.push(
      panel(
        model,
        `${model}${synthetic ? ' (random weights)' : ''}: time to first token`,
        'TTFT, ms (median)',
        (r) => r.ttft_cpu_ms,
      ),
    );
  }
  for (const model of models)
    panels.push(
      panel(model, `${model}: decode speed after the prompt`, 'decode tokens/s (median)', (r) => r.decode_tok_s),
    );
  return renderPanels(panels, { perRow: Math.max(1, models.length), caption });
}

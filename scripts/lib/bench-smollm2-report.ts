/** The SmolLM2 peers section: summary figures, markdown tables (figures, checks, targets) and the plot. */
import type { SmolRow, SmolRun, SmolTrial } from './bench-smollm2.js';
import { usefulPrefillFlops } from './bench-report.js';
import type { MatMulPeak } from './bench-peak.js';
import { median } from './stats.js';
import { PALETTE, renderPanels, type Panel } from './svg-plot.js';

export interface SmolFigure {
  id: string;
  row: string;
  length: number;
  reps: number;
  /** medians; the headline is min(wall, CPU) per repetition for one-thread rows, the page clock for browser rows */
  ttft_ms: number;
  ttft_wall_ms: number;
  own_ttft_ms: number | null;
  prefill_tok_s: number;
  decode_tok_s: number;
  own_decode_tok_s: number | null;
  /** useful dense prefill FLOPs / TTFT */
  gflops: number;
  foreign_cores_median: number;
  foreign_cores_max: number;
  /** every repetition's own prompt token count equals the prompt's */
  prompt_tokens_ok: boolean;
  prompt_tokens: number[];
  /** leading greedy tokens equal to the dense row's (of `decode`) */
  same_prefix_as_dense: number | null;
}

const ttftOf = (t: SmolTrial) => Math.min(t.ttftMs, t.ttftCpuMs);
const decodeOf = (t: SmolTrial) => Math.min(t.decodeMs, t.decodeCpuMs);

function leadingEqual(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

export function summarizeSmol(run: SmolRun): SmolFigure[] {
  const out: SmolFigure[] = [];
  const dense = run.rows.find((r) => r.id === 'dense');
  for (const length of run.lengths) {
    for (const r of run.rows) {
      const trials = r.trials[length];
      if (!trials?.length) continue;
      const own = trials.filter((t) => t.own);
      const ttft = median(trials.map(ttftOf));
      const d0 = dense?.trials[length]?.[0];
      out.push({
        id: r.id,
        row: r.row,
        length,
        reps: trials.length,
        ttft_ms: ttft,
        ttft_wall_ms: median(trials.map((t) => t.ttftMs)),
        own_ttft_ms: own.length ? median(own.map((t) => t.own!.ttftMs)) : null,
        prefill_tok_s: (length * 1000) / ttft,
        decode_tok_s: median(trials.map((t) => (run.decode * 1000) / decodeOf(t))),
        own_decode_tok_s: own.length ? median(own.map((t) => (t.own!.decodeTokens * 1000) / t.own!.decodeMs)) : null,
        gflops: usefulPrefillFlops(run.config, length) / ttft / 1e6,
        foreign_cores_median: median(trials.map((t) => t.foreignCores)),
        foreign_cores_max: Math.max(...trials.map((t) => t.foreignCores)),
        prompt_tokens_ok: trials.every((t) => t.promptTokens === length),
        prompt_tokens: [...new Set(trials.map((t) => t.promptTokens))],
        same_prefix_as_dense: r.id === 'dense' || !d0 ? null : leadingEqual(d0.tokens, trials[0].tokens),
      });
    }
  }
  return out;
}

const f0 = (v: number | null) => (v !== null && Number.isFinite(v) ? v.toFixed(0) : '–');
const f1 = (v: number | null) => (v !== null && Number.isFinite(v) ? v.toFixed(1) : '–');
const f2 = (v: number | null) => (v !== null && Number.isFinite(v) ? v.toFixed(2) : '–');

export function smolFiguresTable(run: SmolRun, figs: SmolFigure[]): string {
  const head =
    '| prompt | row | TTFT ms | TTFT ms (wall) | TTFT ms (own API) | prefill tok/s | decode tok/s | decode tok/s (own API) | dense TTFT / row TTFT | GFLOP/s ‡ | peak RSS MB § | prompt tokens (row\'s own count) | greedy tokens = dense | other processes, cores ¶ |\n' +
    '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |';
  const lines = figs.map((f) => {
    const dense = figs.find((x) => x.id === 'dense' && x.length === f.length);
    const row = run.rows.find((r) => r.id === f.id)!;
    const toks = `${f.prompt_tokens.join('/')}${f.prompt_tokens_ok ? '' : ' **≠**'}`;
    const same = f.same_prefix_as_dense === null ? '' : f.same_prefix_as_dense >= run.decode ? `all ${run.decode}` : `first ${f.same_prefix_as_dense} of ${run.decode}`;
    return `| ${f.length} | ${f.row} | ${f0(f.ttft_ms)} | ${f0(f.ttft_wall_ms)} | ${f0(f.own_ttft_ms)} | ${f1(f.prefill_tok_s)} | ${f1(f.decode_tok_s)} | ${f1(f.own_decode_tok_s)} | ${dense ? f2(dense.ttft_ms / f.ttft_ms) + 'x' : '–'} | ${f1(f.gflops)} | ${f0(row.peakRssMb)} | ${toks} | ${same} | ${f2(f.foreign_cores_median)} (max ${f2(f.foreign_cores_max)}) |`;
  });
  const missing = run.rows.filter((r) => !r.available).map((r) => `| – | ${r.row} | not available on this machine: ${r.reason} | | | | | | | | | | | |`);
  return [head, ...lines, ...missing].join('\n');
}

export function smolChecksTable(run: SmolRun): string {
  const rows = run.rows.filter((r) => r.available && r.checks.length);
  if (!rows.length) return '(chat checks not run)';
  const head = '| row | greedy chat replies equal to the exact-weights reference (before any near-tie) | prompt token counts equal to ours | departs on |\n| --- | ---: | ---: | --- |';
  const lines = rows.map((r) => {
    const ok = r.checks.filter((c) => c.agreesWithExact);
    const counts = r.checks.filter((c) => c.promptTokens === c.expectedPromptTokens);
    const departs = r.checks.filter((c) => !c.agreesWithExact).map((c) => `"${c.name}"`).join(', ');
    return `| ${r.row} | ${ok.length}/${r.checks.length} | ${counts.length}/${r.checks.length} | ${departs} |`;
  });
  return [head, ...lines].join('\n');
}

/** The issue's targets at 2048 tokens (or the longest measured prompt up to 2048, said so). */
export function smolTargetsTable(run: SmolRun, figs: SmolFigure[], peak: MatMulPeak | null): string {
  const at = Math.max(...run.lengths.filter((l) => l <= 2048));
  const get = (id: string) => figs.find((f) => f.id === id && f.length === at);
  const dense = get('dense');
  const lazy = get('lazy');
  const native = get('llama.cpp');
  const wl = [get('wllama-1'), get('wllama-2')].filter((x): x is SmolFigure => !!x);
  // wllama's best: the faster of its thread counts, figure by figure.
  const wTtft = wl.length ? wl.reduce((a, b) => (a.ttft_ms <= b.ttft_ms ? a : b)) : undefined;
  const wDec = wl.length ? wl.reduce((a, b) => (a.decode_tok_s >= b.decode_tok_s ? a : b)) : undefined;
  const lines = ['| target (SmolLM2, ' + at + ' tokens) | measured | met | what bounds it |', '| --- | --- | --- | --- |'];
  const verdict = (ok: boolean | null) => (ok === null ? 'not measured' : ok ? 'yes' : '**no**');
  // What bounds a target is said where it is missed.
  const bound = (ok: boolean | null, text: string) => (ok === false ? text : '');
  const dGf = dense ? dense.gflops : NaN;
  const peakGf = peak?.gflopsCpu ?? NaN;
  const kernel = dense
    ? `dense prefill runs at ${dGf.toFixed(1)} GFLOP/s, ${((100 * dGf) / peakGf).toFixed(0)}% of the f32 wasm MatMul peak measured in this run (${peakGf.toFixed(1)}); at 100% of it TTFT would be ${(dense.ttft_ms * (dGf / peakGf) / 1000).toFixed(1)} s`
    : '';
  {
    const r = lazy && wTtft ? wTtft.ttft_ms / lazy.ttft_ms : null;
    const ok = r === null ? null : r >= 3;
    lines.push(`| lazy TTFT >= 3x faster than wllama's | ${r === null ? '–' : `${r.toFixed(2)}x (${wTtft!.row} ${f0(wTtft!.ttft_ms)} ms, lazy ${f0(lazy!.ttft_ms)} ms)`} | ${verdict(ok)} | ${bound(ok, `lazy runs the pruned prefill on the same f32 kernels as dense; ${kernel}`)} |`);
  }
  {
    const r = dense && wTtft ? wTtft.ttft_ms / dense.ttft_ms : null;
    const ok = r === null ? null : r >= 1;
    lines.push(`| dense TTFT no slower than wllama's | ${r === null ? '–' : `wllama / dense TTFT ${r.toFixed(2)}x (${wTtft!.row})`} | ${verdict(ok)} | ${bound(ok, kernel)} |`);
  }
  for (const f of [dense, lazy]) {
    if (!f) continue;
    const r = wDec ? f.decode_tok_s / wDec.decode_tok_s : null;
    const ok = r === null ? null : r >= 1;
    lines.push(`| ${f.id} decode tokens/s >= wllama's | ${r === null ? '–' : `${f1(f.decode_tok_s)} vs ${f1(wDec!.decode_tok_s)} (${wDec!.row}): ${r.toFixed(2)}x`} | ${verdict(ok)} | ${bound(ok, f.id === 'lazy' ? 'each early decode step revives the tokens prefill pruned (Aux Cache), so the first steps after a long prompt do much of the skipped work' : 'one decode step is 30 layers of f32 matrix-vector products plus attention over the cache, each a separate session run')} |`);
  }
  {
    const r = dense && native ? dense.ttft_ms / native.ttft_ms : null;
    const ok = r === null ? null : r <= 2;
    lines.push(`| dense prefill within 2x of llama.cpp native, 1 thread | ${r === null ? (run.rows.find((x) => x.id === 'llama.cpp')?.available === false ? 'llama.cpp not available here' : '–') : `dense / llama.cpp TTFT ${r.toFixed(2)}x (${f0(dense!.ttft_ms)} vs ${f0(native!.ttft_ms)} ms)`} | ${verdict(ok)} | ${bound(ok, `${kernel}; llama.cpp multiplies Q4_1 weights by 8-bit activations with AVX-512 VNNI integer dot products, we multiply f32 by f32 on 128-bit wasm SIMD`)} |`);
  }
  return lines.join('\n');
}

const STYLE: Record<string, { color: string; dashed?: boolean }> = {
  dense: { color: PALETTE[0] },
  lazy: { color: PALETTE[1] },
  'llama.cpp': { color: PALETTE[7], dashed: true },
  'wllama-1': { color: PALETTE[4], dashed: true },
  'wllama-2': { color: PALETTE[6], dashed: true },
  'transformers.js-q8': { color: PALETTE[3], dashed: true },
  'transformers.js-q4': { color: PALETTE[5], dashed: true },
};

export function smolSvg(run: SmolRun, figs: SmolFigure[], caption: string): string {
  const ids = [...new Set(figs.map((f) => f.id))];
  const name = (id: string) => run.rows.find((r) => r.id === id)!.row.replace(/`/g, '');
  const panel = (title: string, yLabel: string, y: (f: SmolFigure) => number): Panel => ({
    title,
    xLabel: 'prompt tokens',
    yLabel,
    logX: true,
    logY: true,
    series: ids.map((id) => ({ name: name(id), ...STYLE[id], points: figs.filter((f) => f.id === id).map((f) => [f.length, y(f)] as [number, number]) })),
  });
  return renderPanels(
    [panel('SmolLM2-135M-Instruct: time to first token', 'TTFT, ms (median)', (f) => f.ttft_ms), panel('SmolLM2-135M-Instruct: decode speed after the prompt', 'decode tokens/s (median)', (f) => f.decode_tok_s)],
    { perRow: 2, caption },
  );
}

export function rowInfoList(rows: SmolRow[]): string {
  return rows
    .map((r) => `- **${r.row}**: ${r.available ? Object.entries(r.info ?? {}).map(([k, v]) => `${k} ${typeof v === 'string' ? v : JSON.stringify(v)}`).join('; ') : `not available: ${r.reason}`}`)
    .join('\n');
}

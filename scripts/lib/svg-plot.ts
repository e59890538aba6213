/**
 * A small SVG plotting module (no browser, no dependency): line/scatter panels with linear or log
 * axes, a legend, optional point labels, composed side by side into one SVG document.
 */

export interface Series {
  name: string;
  points: [number, number][];
  color: string;
  dashed?: boolean;
  /** draw markers only, no connecting line */
  scatter?: boolean;
  /** text drawn next to each point (same order as points) */
  labels?: string[];
  /** emphasised marker (e.g. the default configuration) */
  highlight?: boolean;
}

export interface Panel {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  logX?: boolean;
  logY?: boolean;
  /** start a linear y axis at 0 (default: fit the data) */
  yFromZero?: boolean;
  /** horizontal reference lines */
  hLines?: { y: number; label: string }[];
}

export const PALETTE = ['#1f77b4', '#d62728', '#ff7f0e', '#2ca02c', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function niceTicks(lo: number, hi: number, log: boolean): number[] {
  if (log) {
    const ticks: number[] = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      for (const m of [1, 2, 5]) {
        const v = m * 10 ** e;
        if (v >= lo * 0.999 && v <= hi * 1.001) ticks.push(v);
      }
    }
    return ticks;
  }
  const span = hi - lo || 1;
  const step0 = 10 ** Math.floor(Math.log10(span / 5));
  const step = [1, 2, 5, 10].map((m) => m * step0).find((s) => span / s <= 7) ?? step0 * 10;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6 || a < 1e-2) return v.toExponential(0);
  if (a >= 1e3) return `${Number((v / 1e3).toPrecision(3))}k`;
  return String(Number(v.toPrecision(3)));
}

function panelSvg(p: Panel, x0: number, width: number, height: number): string {
  const m = { l: 62, r: 14, t: 30, b: 46 };
  const W = width - m.l - m.r;
  const H = height - m.t - m.b;
  const pts = p.series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const ys = [...pts.map((q) => q[1]), ...(p.hLines ?? []).map((h) => h.y)];
  let [xlo, xhi] = [Math.min(...pts.map((q) => q[0])), Math.max(...pts.map((q) => q[0]))];
  let [ylo, yhi] = [Math.min(...ys), Math.max(...ys)];
  if (p.logX) [xlo, xhi] = [xlo / 1.15, xhi * 1.15];
  else [xlo, xhi] = [xlo - (xhi - xlo) * 0.05 || xlo - 1, xhi + (xhi - xlo) * 0.05 || xhi + 1];
  if (p.logY) [ylo, yhi] = [ylo / 1.3, yhi * 1.3];
  else {
    const pad = (yhi - ylo) * 0.08 || 1;
    [ylo, yhi] = [p.yFromZero ? Math.min(0, ylo) : ylo - pad, yhi + pad];
  }
  const tx = (x: number) => x0 + m.l + (p.logX ? Math.log(x / xlo) / Math.log(xhi / xlo) : (x - xlo) / (xhi - xlo)) * W;
  const ty = (y: number) => m.t + H - (p.logY ? Math.log(y / ylo) / Math.log(yhi / ylo) : (y - ylo) / (yhi - ylo)) * H;
  const out: string[] = [];
  out.push(`<text x="${x0 + m.l + W / 2}" y="18" text-anchor="middle" font-weight="bold">${esc(p.title)}</text>`);
  out.push(`<rect x="${x0 + m.l}" y="${m.t}" width="${W}" height="${H}" fill="none" stroke="#444"/>`);
  for (const v of niceTicks(xlo, xhi, !!p.logX)) {
    out.push(`<line x1="${tx(v)}" y1="${m.t}" x2="${tx(v)}" y2="${m.t + H}" stroke="#eee"/>`);
    out.push(`<text x="${tx(v)}" y="${m.t + H + 14}" text-anchor="middle" font-size="10">${fmt(v)}</text>`);
  }
  for (const v of niceTicks(ylo, yhi, !!p.logY)) {
    out.push(`<line x1="${x0 + m.l}" y1="${ty(v)}" x2="${x0 + m.l + W}" y2="${ty(v)}" stroke="#eee"/>`);
    out.push(`<text x="${x0 + m.l - 5}" y="${ty(v) + 3}" text-anchor="end" font-size="10">${fmt(v)}</text>`);
  }
  out.push(
    `<text x="${x0 + m.l + W / 2}" y="${height - 8}" text-anchor="middle" font-size="11">${esc(p.xLabel)}</text>`,
  );
  out.push(
    `<text transform="translate(${x0 + 14},${m.t + H / 2}) rotate(-90)" text-anchor="middle" font-size="11">${esc(p.yLabel)}</text>`,
  );
  for (const h of p.hLines ?? []) {
    out.push(
      `<line x1="${x0 + m.l}" y1="${ty(h.y)}" x2="${x0 + m.l + W}" y2="${ty(h.y)}" stroke="#999" stroke-dasharray="2,3"/>`,
    );
    out.push(
      `<text x="${x0 + m.l + W - 3}" y="${ty(h.y) - 3}" text-anchor="end" font-size="9" fill="#666">${esc(h.label)}</text>`,
    );
  }
  p.series.forEach((s, si) => {
    const good = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (!s.scatter && good.length > 1) {
      const d = good.map(([x, y], i) => `${i ? 'L' : 'M'}${tx(x).toFixed(1)},${ty(y).toFixed(1)}`).join('');
      out.push(
        `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.8"${s.dashed ? ' stroke-dasharray="5,3"' : ''}/>`,
      );
    }
    s.points.forEach(([x, y], i) => {
      if (!Number.isFinite(x) || !Number.isFinite(y)) return;
      const r = s.highlight ? 6 : 3;
      out.push(
        `<circle cx="${tx(x).toFixed(1)}" cy="${ty(y).toFixed(1)}" r="${r}" fill="${s.highlight ? 'none' : s.color}" stroke="${s.color}" stroke-width="${s.highlight ? 2.5 : 1}"/>`,
      );
      const label = s.labels?.[i];
      if (label)
        out.push(
          `<text x="${(tx(x) + 5).toFixed(1)}" y="${(ty(y) - 5).toFixed(1)}" font-size="8" fill="#333">${esc(label)}</text>`,
        );
    });
    // legend
    const ly = m.t + 10 + si * 13;
    const lx = x0 + m.l + 8;
    out.push(
      `<line x1="${lx}" y1="${ly}" x2="${lx + 16}" y2="${ly}" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="5,3"' : ''}/>`,
    );
    out.push(`<text x="${lx + 20}" y="${ly + 3}" font-size="10">${esc(s.name)}</text>`);
  });
  return out.join('\n');
}

/** Panels side by side (wrapping after `perRow`), one SVG document. */
export function renderPanels(
  panels: Panel[],
  opts: { panelWidth?: number; panelHeight?: number; perRow?: number; caption?: string } = {},
): string {
  const pw = opts.panelWidth ?? 420;
  const ph = opts.panelHeight ?? 320;
  const perRow = opts.perRow ?? 3;
  const rows = Math.ceil(panels.length / perRow);
  const capH = opts.caption ? 22 : 0;
  const width = pw * Math.min(perRow, panels.length);
  const height = ph * rows + capH;
  const body = panels
    .map(
      (p, i) =>
        `<g transform="translate(0,${Math.floor(i / perRow) * ph})">${panelSvg(p, (i % perRow) * pw, pw, ph)}</g>`,
    )
    .join('\n');
  const caption = opts.caption
    ? `<text x="8" y="${height - 7}" font-size="${width < 600 ? 7 : 10}" fill="#555">${esc(opts.caption)}</text>`
    : '';
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">\n<rect width="100%" height="100%" fill="white"/>\n${body}\n${caption}\n</svg>\n`;
}

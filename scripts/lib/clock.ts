/**
 * Clocks for the benchmark. The machine may be shared, so besides wall time every figure is also
 * taken as on-CPU time: inference here is single-threaded (onnxruntime-web wasm, one thread), so on
 * an idle core the two agree, and on a busy machine CPU time is what the work cost rather than how
 * long it waited for a core.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { cpus } from 'node:os';
import { descendants } from './proc.js';

/**
 * On-CPU milliseconds of this process (getrusage: exact, unlike the tick-updated per-thread
 * counters in /proc). Node's helper threads are idle after warm-up, so this is the main thread's.
 */
export function threadCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/**
 * The fastest of repeated calls of `run`, in on-CPU ms, after `warmups` untimed calls (prepacking,
 * allocation, tier-up): calls go on until `budgetMs` of CPU is spent and at least `minRuns` were made.
 * The minimum, because on a shared machine every slower run is the same work plus interference.
 */
export async function bestCpuMs(
  run: () => Promise<unknown>,
  o: { warmups: number; budgetMs: number; minRuns: number },
): Promise<{ best: number; runs: number }> {
  for (let i = 0; i < o.warmups; i++) await run();
  let best = Infinity;
  let spent = 0;
  let runs = 0;
  while (spent < o.budgetMs || runs < o.minRuns) {
    const c0 = threadCpuMs();
    await run();
    const dt = threadCpuMs() - c0;
    best = Math.min(best, dt);
    spent += dt;
    runs++;
  }
  return { best, runs };
}

/**
 * On-CPU milliseconds of every thread of another process (e.g. workerd, read while it is idle so the
 * per-thread counters are current), or NaN if unreadable.
 */
export function processCpuMs(pid: number): number {
  try {
    let ns = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`))
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    return ns / 1e6;
  } catch {
    return NaN;
  }
}

/** 1-minute load average per core, to say how busy the machine was during a measurement. */
export function loadPerCore(): number {
  try {
    const [one] = readFileSync('/proc/loadavg', 'utf8').split(' ');
    return Number(one) / Math.max(1, cpus().length);
  } catch {
    return NaN;
  }
}

/** Busy CPU ms of the whole machine (all cores; /proc/stat, 10 ms ticks), NaN if unreadable. */
export function machineBusyMs(): number {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal: everything but idle and iowait
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0)) * 10;
  } catch {
    return NaN;
  }
}

/** On-CPU ms of this process and every process below it (the bench's children, its browsers). */
export function ownTreeCpuMs(): number {
  const mine = process.cpuUsage();
  let ms = (mine.user + mine.system) / 1000;
  for (const pid of descendants(process.pid)) {
    const c = processCpuMs(pid);
    if (Number.isFinite(c)) ms += c;
  }
  return ms;
}

/**
 * Cores kept busy by processes other than this bench and its children, over a window: the
 * machine's busy time minus our own, per wall second. 1.0 = another process held a whole core.
 */
export class ForeignLoad {
  private busy0 = machineBusyMs();
  private own0 = ownTreeCpuMs();
  private t0 = performance.now();

  cores(): number {
    const wall = performance.now() - this.t0;
    return Math.max(0, (machineBusyMs() - this.busy0 - (ownTreeCpuMs() - this.own0)) / wall);
  }
}

/** Foreign cores over a short idle sample (the bench does nothing meanwhile). */
export async function sampleForeignLoad(ms = 3000): Promise<number> {
  const w = new ForeignLoad();
  await new Promise((r) => setTimeout(r, ms));
  return w.cores();
}

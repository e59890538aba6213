/**
 * Clocks for the benchmark. The machine may be shared, so besides wall time every figure is also
 * taken as on-CPU time: inference here is single-threaded (onnxruntime-web wasm, one thread), so on
 * an idle core the two agree, and on a busy machine CPU time is what the work cost rather than how
 * long it waited for a core.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { cpus } from 'node:os';

/**
 * On-CPU milliseconds of this process (getrusage: exact, unlike the tick-updated per-thread
 * counters in /proc). Node's helper threads are idle after warm-up, so this is the main thread's.
 */
export function threadCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/**
 * On-CPU milliseconds of every thread of another process (e.g. workerd, read while it is idle so the
 * per-thread counters are current), or NaN if unreadable.
 */
export function processCpuMs(pid: number): number {
  try {
    let ns = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    return ns / 1e6;
  } catch {
    return NaN;
  }
}

export { median } from './stats.js';

/** 1-minute load average per core, to say how busy the machine was during a measurement. */
export function loadPerCore(): number {
  try {
    const [one] = readFileSync('/proc/loadavg', 'utf8').split(' ');
    return Number(one) / Math.max(1, cpus().length);
  } catch {
    return NaN;
  }
}

/** Processes below a pid, and their CPU time and peak memory, from /proc (Linux). */
import { readdirSync, readFileSync } from 'node:fs';

/** The command name of a process ('' once it is gone). */
export function processName(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
  } catch {
    return '';
  }
}

export function descendants(root: number): number[] {
  const parent = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone already
    }
  }
  const out: number[] = [];
  for (const pid of parent.keys())
    for (let p = parent.get(pid); p; p = parent.get(p))
      if (p === root) {
        out.push(pid);
        break;
      }
  return out;
}

/** CPU ms of every thread of the processes (threads that ended are lost, so read during the work's life) */
export function treeCpuMs(pids: number[]): number {
  let ns = 0;
  for (const pid of pids) {
    try {
      for (const tid of readdirSync(`/proc/${pid}/task`))
        ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // gone
    }
  }
  return ns / 1e6;
}

/** the largest VmHWM (peak RSS) among the processes, MB */
export function maxPeakRssMb(pids: number[]): number | null {
  let best: number | null = null;
  for (const pid of pids) {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) best = Math.max(best ?? 0, Number(m[1]) / 1024);
    } catch {
      // gone
    }
  }
  return best;
}

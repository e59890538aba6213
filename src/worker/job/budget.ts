/**
 * The request budget (REQUEST_BUDGET_MS) against the speed this isolate has measured: a prefill
 * that cannot finish within the budget is refused before it starts, rather than run for the whole
 * budget and answered with one token. A generation that runs out while decoding ends with
 * finish_reason "time_limit" (engine/generate.ts).
 */
import type { GenerationStats } from '../../engine/generate.js';
import type { ModelConfig } from '../../model/config.js';
import { expectedStepFlops, layerFlops } from '../../engine/step.js';
import { RequestError } from '../faults.js';
import type { Job } from './plan.js';

/** Prefills shorter than this say more about overheads than about speed. */
const MIN_MEASURED_MS = 200;
/** How many recent prefills the speed is taken from. */
const RECENT = 8;

/**
 * The prefill speed this isolate measured, in FLOPs per ms, per served model and path (whole or
 * split): the fastest of the recent prefills, so that a slow moment (a busy host) never refuses a
 * request the isolate could serve.
 */
export class PrefillSpeed {
  /** per model and path: FLOPs per ms of the last RECENT prefills, oldest first */
  private readonly recent = new Map<string, number[]>();

  record(key: string, flops: number, ms: number): void {
    if (ms < MIN_MEASURED_MS || flops <= 0) return;
    const r = this.recent.get(key) ?? [];
    r.push(flops / ms);
    if (r.length > RECENT) r.shift();
    this.recent.set(key, r);
  }

  /** Forgets what was measured on `key` (a test, or a path whose speed changed). */
  forget(key: string): void {
    this.recent.delete(key);
  }

  /** null until this isolate has measured a prefill on this path */
  flopsPerMs(key: string): number | null {
    const r = this.recent.get(key);
    return r?.length ? Math.max(...r) : null;
  }
}

/** One per isolate: every request of the isolate measures for the next ones. */
export const prefillSpeed = new PrefillSpeed();

/** The FLOPs a finished generation's prefill computed, from its per-layer rows against all its keys. */
export function prefillFlops(cfg: ModelConfig, stats: GenerationStats, held: number): number {
  const t = held + stats.prompt_tokens;
  return stats.prefill_computed_per_layer.reduce((f, q) => f + layerFlops(cfg, q, t), 0);
}

/**
 * Refuses `job` (503 request_budget_exceeded, naming the budget) when its prefill after `held`
 * reused tokens is expected to take longer than the time left before its deadline at the speed
 * measured on `path`. Nothing has started when it refuses.
 */
export function checkBudget(job: Job, held: number, path: string, now = performance.now()): void {
  const speed = prefillSpeed.flopsPerMs(path);
  if (speed === null) return;
  const cfg = job.model.config;
  const expectedMs = expectedStepFlops(cfg, job.schedule, held, job.prompt.length - held) / speed;
  const leftMs = job.deadline - now;
  if (expectedMs <= leftMs) return;
  const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  throw new RequestError(
    `This request's prefill of ${job.prompt.length - held} tokens would take about ${s(expectedMs)} at the speed ` +
      `this server measured (${(speed / 1e6).toFixed(2)} GFLOP/s), more than the ${s(leftMs)} left of its request ` +
      `budget (REQUEST_BUDGET_MS). Send a shorter prompt, or prune more (lazy.schedule).`,
    'request_budget_exceeded',
    null,
    503,
  );
}

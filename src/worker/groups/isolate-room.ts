/**
 * The room that the group instances one isolate hosts share. Cloudflare may place any number of a
 * group Worker's instances in one isolate (the pool chains' and every session's; locally workerd
 * always does): the weights are held once (parts.ts), but each instance's state is its own, and
 * they all count against the one isolate's 128 MB. So before a step grows an instance's state, the
 * isolate's estimate (the part's fixed bytes, every hosted state as it is, and this state as it will
 * be) must stay within the memory budget; otherwise the step is refused with a clear 503 before
 * anything changes, and the session or request it serves keeps what it had.
 */
import type { SequenceState } from '../../engine/caches.js';
import { MB, type MemoryEstimate } from '../../engine/memory-budget.js';
import type { ModelPart } from '../../engine/model.js';
import { failureOf, type Failure } from '../faults.js';

/** An instance hosted here: the states it holds now. */
export interface Tenant {
  heldStates(): SequenceState[];
  /** drops a state held only for reuse (the split prefix cache), returning whether there was one */
  dropKept?(): boolean;
}

/**
 * The instances this isolate hosts, held weakly: one the runtime evicts leaves with its state (its
 * bytes count until it is collected, which only errs towards refusing).
 */
const tenants = new Set<WeakRef<Tenant>>();

export function hostTenant(t: Tenant): void {
  tenants.add(new WeakRef(t));
}

/** The hosted instances still alive. */
function liveTenants(): Tenant[] {
  const out: Tenant[] = [];
  for (const ref of tenants) {
    const t = ref.deref();
    if (t) out.push(t);
    else tenants.delete(ref);
  }
  return out;
}

/** Every state the hosted instances hold now. */
function hostedStates(): SequenceState[] {
  return liveTenants().flatMap((t) => t.heldStates());
}

/** The states hosted here and their bytes: for measurements (the isolate probe). */
export function hostedFigures(): { states: number; bytes: number } {
  const states = hostedStates();
  return { states: states.length, bytes: states.reduce((t, s) => t + s.bytes, 0) };
}

/** What an isolate holds whatever its instances' states: weights, their load copies or the attention temporaries, runtime. */
export function fixedBytes(memory: MemoryEstimate): number {
  return memory.total - memory.kvCache - memory.auxCache;
}

const mb = (b: number) => `${(b / MB).toFixed(1)} MB`;

/**
 * Null when `seq` may grow to `tokens` tokens (Aux entries included when the step `parks` tokens)
 * within the isolate's budget beside every other hosted state; else the refusal to answer.
 */
export function refuseGrowth(part: ModelPart, seq: SequenceState, tokens: number, parks: boolean): Failure | null {
  const budget = part.memoryBudgetBytes;
  if (!Number.isFinite(budget)) return null;
  const fixed = fixedBytes(part.memory);
  const need = seq.bytesAt(tokens, parks);
  const fits = () => {
    const others = hostedStates().filter((s) => s !== seq);
    const othersBytes = others.reduce((t, s) => t + s.bytes, 0);
    return { others, othersBytes, ok: fixed + othersBytes + need <= budget };
  };
  let f = fits();
  // States kept only for reuse (the prefix cache) make room before anything is refused.
  for (const t of liveTenants()) {
    if (f.ok) return null;
    if (t.dropKept?.()) f = fits();
  }
  if (f.ok) return null;
  const { others, othersBytes } = f;
  const { start, end } = part.layerRange;
  return failureOf(
    503,
    `The isolate running layers ${start}..${end - 1} is full: a state of ${tokens} tokens needs ${mb(need)} ` +
      `beside ${others.length} other state(s) holding ${mb(othersBytes)} and ${mb(fixed)} of weights and runtime, ` +
      `over the isolate memory budget of ${mb(budget)} (MEMORY_BUDGET_MB). Nothing was changed; retry later, with a shorter prompt, or after idle sessions end.`,
    'isolate_full',
    null,
    'server_error',
  );
}

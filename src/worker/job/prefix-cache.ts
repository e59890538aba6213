/**
 * The isolate's prefix cache (engine/prefix-cache.ts) for stateless requests with the whole model
 * here: one per loaded model, sized by PREFIX_CACHE_MB and by what the isolate's memory budget
 * leaves for sequence states.
 */
import type { LoadedModel, ModelPart } from '../../engine/model.js';
import { PrefixCache } from '../../engine/prefix-cache.js';
import { configOf } from '../config.js';
import { fixedBytes } from '../groups/isolate-room.js';
import type { Env } from '../env.js';

/**
 * Common prefixes shorter than this start fresh: BOS and a chat template's opening are shared by
 * nearly every request, and taking a cached document away for them would save nothing.
 */
export const MIN_PREFIX_MATCH = 16;

/**
 * Bytes the budget leaves for sequence states: the budget less what the model needs besides the
 * one state its estimate counts (engine/memory-budget.ts: kvCache and auxCache at the served context).
 */
export function stateRoomBytes(model: Pick<ModelPart, 'memory' | 'memoryBudgetBytes'>): number {
  return model.memoryBudgetBytes - fixedBytes(model.memory);
}

const caches = new WeakMap<LoadedModel, PrefixCache>();

/** The isolate's prefix cache for `model`, or null when PREFIX_CACHE_MB is 0. */
export function isolatePrefixCache(env: Partial<Env>, model: LoadedModel): PrefixCache | null {
  const maxBytes = configOf(env).prefixCacheBytes;
  if (maxBytes <= 0) return null;
  let c = caches.get(model);
  if (!c || c.limits.maxBytes !== maxBytes) {
    c = new PrefixCache(model.config, { maxBytes, stateRoomBytes: stateRoomBytes(model), minMatch: MIN_PREFIX_MATCH });
    caches.set(model, c);
  }
  return c;
}

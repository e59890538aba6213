/**
 * Recent requests' sequence states, kept so that a later request sharing a prefix with one of them
 * (the same system prompt, tool list or document, a new question) computes only its new tokens.
 * A request *leases* the entry holding the longest common token prefix: the entry leaves the cache,
 * so no other request can write the same state, and comes back afterwards holding the request's
 * prompt and reply (runTurn truncates it to the common prefix and feeds the rest; with LazyLLM the
 * new prompt re-selects over the whole context and revives what the earlier request pruned from the
 * Aux Cache). A request that fails gives its lease up: a half-written state is never cached.
 *
 * Memory: every state in the isolate (cached, leased or fresh) must fit `stateRoomBytes`, what the
 * memory budget leaves once the model's fixed needs are counted; the cache evicts least recently
 * used entries to admit a request's own state before it runs, and to stay within `maxBytes`.
 */
import { SequenceState } from './caches.js';
import { EngineError } from './errors.js';
import type { ModelConfig } from '../model/config.js';
import { commonPrefix } from './turns.js';

export interface PrefixCacheLimits {
  /** bytes the cached states may hold together (PREFIX_CACHE_MB) */
  maxBytes: number;
  /**
   * bytes every state of the isolate may hold together, cached and in use: the memory budget less
   * what the model needs besides its states (Infinity: no budget)
   */
  stateRoomBytes: number;
  /** a shorter common prefix is not worth taking an entry away from the cache: the request starts fresh */
  minMatch: number;
}

/** A state lent to one request; given back once, with `restore` (finished) or `discard` (failed). */
export interface PrefixLease {
  readonly seq: SequenceState;
  /** tokens of the request's prompt the state held when lent (what runTurn will keep, at most) */
  readonly matched: number;
  /** bytes counted for the request while it runs: the most its state can reach */
  readonly reservedBytes: number;
}

interface Entry {
  seq: SequenceState;
  /** bytes the state holds (seq.bytes when it came back) */
  bytes: number;
}

export interface PrefixCacheFigures {
  entries: number;
  /** bytes the cached states hold */
  bytes: number;
  /** bytes counted for the states of requests running now */
  leasedBytes: number;
}

export class PrefixCache {
  /** cached states, least recently used first */
  private entries: Entry[] = [];
  /** bytes of `entries` */
  private held = 0;
  /** leases out, by lease: the bytes each was counted for */
  private readonly out = new Map<PrefixLease, number>();
  private leased = 0;

  constructor(
    readonly config: ModelConfig,
    readonly limits: PrefixCacheLimits,
  ) {
    if (!(limits.maxBytes > 0) || !(limits.stateRoomBytes > 0) || !(limits.minMatch >= 1))
      throw new EngineError(
        'a prefix cache needs positive byte limits and a minimum match of 1 token or more',
        'internal',
      );
  }

  figures(): PrefixCacheFigures {
    return { entries: this.entries.length, bytes: this.held, leasedBytes: this.leased };
  }

  /** The token sequences cached, least recently used first (for tests and measurements). */
  cachedTokens(): number[][] {
    return this.entries.map((e) => [...e.seq.tokens]);
  }

  /**
   * Lends a state for a request over `prompt` that may grow to `finalLength` tokens: the cached
   * entry sharing the longest prefix with the prompt (at least minMatch tokens; the most recently
   * used among equals), taken out of the cache, or else a fresh state. Least recently used entries
   * are evicted first until the request's own state fits the room every state shares.
   */
  lease(prompt: readonly number[], finalLength: number): PrefixLease {
    let best = -1;
    let bestLen = 0;
    for (let k = this.entries.length - 1; k >= 0; k--) {
      const n = Math.min(commonPrefix(this.entries[k].seq.tokens, prompt), prompt.length - 1);
      if (n >= this.limits.minMatch && n > bestLen) [best, bestLen] = [k, n];
    }
    let seq: SequenceState;
    if (best >= 0) {
      const [e] = this.entries.splice(best, 1);
      this.held -= e.bytes;
      seq = e.seq;
    } else {
      seq = new SequenceState(this.config);
    }
    // The most the state can reach for this request, every token parked in the Aux Cache at worst.
    const reservedBytes = seq.bytesAt(finalLength, true);
    this.evictUntil(() => this.held + this.leased + reservedBytes <= this.limits.stateRoomBytes);
    const lease: PrefixLease = { seq, matched: bestLen, reservedBytes };
    this.out.set(lease, reservedBytes);
    this.leased += reservedBytes;
    return lease;
  }

  /**
   * Takes back a finished request's state (its prompt and reply) as the most recently used entry.
   * Cached entries whose tokens are a prefix of it are dropped: it matches every prompt they would,
   * at least as far. An empty state, or one larger than the cache may hold, is dropped instead.
   */
  restore(lease: PrefixLease): void {
    this.giveBack(lease);
    const seq = lease.seq;
    const bytes = seq.bytes;
    if (seq.length === 0 || bytes > this.limits.maxBytes) return;
    const kept: Entry[] = [];
    for (const e of this.entries) {
      if (commonPrefix(e.seq.tokens, seq.tokens) === e.seq.tokens.length) this.held -= e.bytes;
      else kept.push(e);
    }
    this.entries = kept;
    this.entries.push({ seq, bytes });
    this.held += bytes;
    this.evictUntil(() => this.held <= this.limits.maxBytes && this.held + this.leased <= this.limits.stateRoomBytes);
  }

  /** Gives up a failed or abandoned request's lease: its state, possibly half-written, is dropped. */
  discard(lease: PrefixLease): void {
    this.giveBack(lease);
  }

  /** Drops every cached state (leases out stay counted until they come back). */
  clear(): void {
    this.entries = [];
    this.held = 0;
  }

  private giveBack(lease: PrefixLease): void {
    const bytes = this.out.get(lease);
    if (bytes === undefined) throw new EngineError('this prefix cache lease was already given back', 'internal');
    this.out.delete(lease);
    this.leased -= bytes;
  }

  private evictUntil(fits: () => boolean): void {
    while (this.entries.length > 0 && !fits()) this.held -= this.entries.shift()!.bytes;
  }
}

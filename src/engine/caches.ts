import type { ModelConfig } from '../model/config.js';
import { EngineError } from './errors.js';
import { decodeRows, kvRowBytes, rowStore, type KvFormat, type RawRows, type RowStore } from './kv-rows.js';

/**
 * Per-layer keys and values, one row per token index (token i sits at position i).
 * Row i of layer l is valid iff depth[i] > l; LazyLLM leaves the rows of deeper layers unwritten
 * for tokens it pruned, and fills them in if the token is revived later.
 * Rows are held in `format` (src/engine/kv-rows.ts) and always read and written as f32.
 */
export class KVCache {
  /** keys[l]: [capacity, kvDim] roped keys of layer l */
  private keys: RowStore[];
  /** values[l]: [capacity, kvDim] values of layer l */
  private values: RowStore[];
  capacity: number;

  constructor(
    readonly nLayers: number,
    readonly kvDim: number,
    readonly format: KvFormat = 'f32',
    capacity = 64,
  ) {
    this.capacity = capacity;
    this.keys = Array.from({ length: nLayers }, () => rowStore(format, kvDim, capacity));
    this.values = Array.from({ length: nLayers }, () => rowStore(format, kvDim, capacity));
  }

  /** Grows by doubling so that appending n tokens one at a time costs O(n) copies overall. */
  reserve(n: number): void {
    if (n <= this.capacity) return;
    let cap = this.capacity;
    while (cap < n) cap *= 2;
    for (const s of [...this.keys, ...this.values]) s.grow(cap);
    this.capacity = cap;
  }

  /** Bytes the rows take at the current capacity. */
  get bytes(): number {
    let b = 0;
    for (const s of [...this.keys, ...this.values]) b += s.bytes;
    return b;
  }

  /** Writes rows k, v ([tokens.length, kvDim]) for the given tokens at layer l. */
  write(l: number, tokens: Int32Array, k: Float32Array, v: Float32Array): void {
    const d = this.kvDim;
    for (let j = 0; j < tokens.length; j++) {
      this.keys[l].write(tokens[j], k.subarray(j * d, (j + 1) * d));
      this.values[l].write(tokens[j], v.subarray(j * d, (j + 1) * d));
    }
  }

  /** Rows of the given ascending tokens at layer l as [tokens.length, kvDim] in the cache's format; views when contiguous from 0. */
  gather(l: number, tokens: Int32Array): { k: RawRows; v: RawRows } {
    return { k: this.keys[l].take(tokens), v: this.values[l].take(tokens) };
  }

  /** Row i of layer l as f32 copies ([kvDim] each): for persistence and tests. */
  row(l: number, i: number): { k: Float32Array; v: Float32Array } {
    const at = Int32Array.of(i);
    return { k: decodeRows(this.keys[l].take(at), this.kvDim).slice(), v: decodeRows(this.values[l].take(at), this.kvDim).slice() };
  }
}

/**
 * The Aux Cache: for each token whose depth is below the layer count, the hidden state entering
 * the layer where it stopped (= its depth). A revived token resumes from here instead of layer 0.
 * Read-only here: entries change only through SequenceState (`park`, `resume`), which stamps them.
 */
export class AuxCache {
  /** token index -> hidden state [dim] entering layer depth[token] */
  readonly entries: ReadonlyMap<number, Float32Array>;

  constructor(
    readonly dim: number,
    entries: ReadonlyMap<number, Float32Array>,
  ) {
    this.entries = entries;
  }

  get size(): number {
    return this.entries.size;
  }

  get bytes(): number {
    return this.entries.size * this.dim * 4;
  }
}

/**
 * Everything a sequence carries between steps: its tokens, how deep each has been computed,
 * and the two caches. Passed into every engine step and returned mutated; never hidden inside it.
 */
export class SequenceState {
  /** [n] token ids; token i is at position i */
  tokens: number[] = [];
  /**
   * [capacity] layers computed for token i: KV rows exist for layers 0..depth[i]-1. Read it freely;
   * change it only with `deepen`, which stamps the change for incremental persistence.
   */
  depth: Uint8Array;
  readonly kv: KVCache;
  readonly aux: AuxCache;

  /**
   * Change tracking, for incremental persistence (src/engine/state-codec.ts); the engine itself
   * never reads it. `revision` only grows: `seal()` returns it as a watermark and advances it.
   * [capacity] touchedAt[i]: revision in which token i's depth, KV rows or Aux Cache entry last
   * changed (stamped by `park`, `resume` and `deepen`, the only ways they change). [capacity] bornAt[i]: revision in which index i was last
   * appended, so a consumer can tell "depth grew" from "truncated away and appended again".
   * Whatever changes after `w = seal()` carries a stamp > w.
   */
  revision = 1;
  touchedAt: Uint32Array;
  bornAt: Uint32Array;
  /** the Aux Cache's entries; `aux` is the read-only face of this map */
  private readonly auxEntries = new Map<number, Float32Array>();

  constructor(readonly config: ModelConfig) {
    if (config.nLayers > 255) throw new EngineError('models with more than 255 layers are not supported', 'unsupported_model');
    this.kv = new KVCache(config.nLayers, config.kvDim, config.kvFormat ?? 'f32');
    this.aux = new AuxCache(config.dim, this.auxEntries);
    this.depth = new Uint8Array(this.kv.capacity);
    this.touchedAt = new Uint32Array(this.kv.capacity);
    this.bornAt = new Uint32Array(this.kv.capacity);
  }

  /** Records that token i's depth, KV rows or Aux Cache entry changed (see `revision`). */
  private touch(i: number): void {
    this.touchedAt[i] = this.revision;
  }

  /** Token i stops here: its hidden state `h` [dim] (entering layer depth[i]) goes to the Aux Cache, replacing any earlier one. */
  park(i: number, h: Float32Array): void {
    this.auxEntries.set(i, h);
    this.touch(i);
  }

  /** Token i resumes: takes its Aux Cache entry out and returns it; undefined (nothing changed) when it has none. */
  resume(i: number): Float32Array | undefined {
    const h = this.auxEntries.get(i);
    if (h === undefined) return undefined;
    this.auxEntries.delete(i);
    this.touch(i);
    return h;
  }

  /** Token i has been computed through layer `depth` - 1 (its KV rows up to there are written). */
  deepen(i: number, depth: number): void {
    this.depth[i] = depth;
    this.touch(i);
  }

  /** A watermark: every later change is stamped with a greater revision. */
  seal(): number {
    return this.revision++;
  }

  get length(): number {
    return this.tokens.length;
  }

  append(tokens: readonly number[]): void {
    const n = this.tokens.length + tokens.length;
    this.kv.reserve(n);
    if (n > this.depth.length) {
      const d = new Uint8Array(this.kv.capacity);
      d.set(this.depth);
      this.depth = d;
      const grow = (a: Uint32Array) => {
        const b = new Uint32Array(this.kv.capacity);
        b.set(a);
        return b;
      };
      this.touchedAt = grow(this.touchedAt);
      this.bornAt = grow(this.bornAt);
    }
    for (const t of tokens) {
      const i = this.tokens.length;
      this.depth[i] = 0;
      this.bornAt[i] = this.touchedAt[i] = this.revision;
      this.tokens.push(t);
    }
  }

  /** Forgets every token from index n on (a chat history that diverged from what is cached). */
  truncate(n: number): void {
    if (n >= this.tokens.length) return;
    for (const i of this.auxEntries.keys()) if (i >= n) this.auxEntries.delete(i);
    this.depth.fill(0, n);
    this.tokens.length = n;
  }

  /** Number of (token, layer) K/V rows held. */
  kvEntries(): number {
    let s = 0;
    for (let i = 0; i < this.tokens.length; i++) s += this.depth[i];
    return s;
  }

  /** Bytes of the rows held (not of the capacity reserved: KVCache.bytes). */
  kvBytes(): number {
    return this.kvEntries() * 2 * kvRowBytes(this.kv.format, this.config.kvDim);
  }

  /** How many tokens stopped at each depth 0..nLayers. */
  depthHistogram(): number[] {
    const h = new Array(this.config.nLayers + 1).fill(0);
    for (let i = 0; i < this.tokens.length; i++) h[this.depth[i]]++;
    return h;
  }
}

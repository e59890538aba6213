import type { ModelConfig } from '../model/config.js';
import { EngineError } from './errors.js';
import { decodeRows, kvRowBytes, rowStore, type KvFormat, type RawRows, type RowStore } from './kv-rows.js';

/**
 * Per-layer keys and values of the tokens computed at each layer. Token i has a row at layer l iff
 * depth[i] > l; LazyLLM leaves the rows of deeper layers unwritten for tokens it pruned, and fills
 * them in if the token is revived later.
 *
 * A layer's rows are kept in the order they were computed, not by position: the rows of layer l are
 * rows 0..count(l)-1, and a revived token's row goes after the others. So what a step attends to at
 * a layer is always a prefix of its rows, handed to the layer graph as a view (no copy); tokens of
 * that prefix outside the step's active set are masked by position (`layerRows`). With nothing pruned
 * the order is the positions' (row i is token i), as a plain KV cache.
 * Rows are held in `format` (src/engine/kv-rows.ts) and always written as f32.
 */
export class KVCache {
  /** keys[l]: [capacity, kvDim] roped keys of layer l, row s belonging to token tokenAt[l][s] */
  private keys: RowStore[];
  /** values[l]: [capacity, kvDim] values of layer l, rows as keys[l] */
  private values: RowStore[];
  /** rowOf[l]: [capacity] the row of token i at layer l, -1 when it has none */
  private rowOf: Int32Array[];
  /** tokenAt[l]: [capacity] the token of row s of layer l, for s < counts[l] */
  private tokenAt: Int32Array[];
  /** [nLayers] rows written at each layer */
  private counts: Int32Array;
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
    this.rowOf = Array.from({ length: nLayers }, () => new Int32Array(capacity).fill(-1));
    this.tokenAt = Array.from({ length: nLayers }, () => new Int32Array(capacity));
    this.counts = new Int32Array(nLayers);
  }

  /**
   * Room for n tokens. Grows by doubling so that appending n tokens one at a time costs O(n) copies
   * overall; `exact` grows to n itself, for a caller that knows the final length (generate(): the
   * prompt plus max_tokens), so that no decode step copies every layer's rows to grow.
   */
  reserve(n: number, exact = false): void {
    if (n <= this.capacity) return;
    const cap = this.capacityFor(n, exact);
    for (const s of [...this.keys, ...this.values]) s.grow(cap);
    const grow = (a: Int32Array, fill: number) => {
      const b = new Int32Array(cap).fill(fill);
      b.set(a);
      return b;
    };
    this.rowOf = this.rowOf.map((a) => grow(a, -1));
    this.tokenAt = this.tokenAt.map((a) => grow(a, 0));
    this.capacity = cap;
  }

  /** The capacity `reserve(n, exact)` leaves. */
  capacityFor(n: number, exact = false): number {
    if (n <= this.capacity || exact) return Math.max(n, this.capacity);
    let cap = this.capacity;
    while (cap < n) cap *= 2;
    return cap;
  }

  /** What `bytes` is at capacity `cap`: K and V rows in this format, and the two row indexes, per layer. */
  bytesAt(cap: number): number {
    return this.nLayers * cap * (2 * kvRowBytes(this.format, this.kvDim) + 8);
  }

  /** Bytes the rows take at the current capacity, with the two row indexes (8 bytes per token and layer). */
  get bytes(): number {
    let b = 0;
    for (const s of [...this.keys, ...this.values]) b += s.bytes;
    for (const a of [...this.rowOf, ...this.tokenAt]) b += a.byteLength;
    return b;
  }

  /** Writes rows k, v ([tokens.length, kvDim]) for the given tokens at layer l; a token without a row there gets the next one. */
  write(l: number, tokens: Int32Array, k: Float32Array, v: Float32Array): void {
    const d = this.kvDim;
    const rowOf = this.rowOf[l];
    for (let j = 0; j < tokens.length; j++) {
      const i = tokens[j];
      let s = rowOf[i];
      if (s < 0) {
        s = this.counts[l]++;
        rowOf[i] = s;
        this.tokenAt[l][s] = i;
      }
      this.keys[l].write(s, k.subarray(j * d, (j + 1) * d));
      this.values[l].write(s, v.subarray(j * d, (j + 1) * d));
    }
  }

  /** The row of token i at layer l, -1 when it has none. */
  rowIndex(l: number, i: number): number {
    return this.rowOf[l][i];
  }

  /** Rows written at layer l. */
  count(l: number): number {
    return this.counts[l];
  }

  /**
   * Every row of layer l, as the layer graph takes its past K/V: k, v [count, kvDim] views in the
   * cache's format, and tokens [count] (a view) the token of each row. Valid until the next write.
   */
  layerRows(l: number): { k: RawRows; v: RawRows; tokens: Int32Array } {
    const n = this.counts[l];
    const prefix = this.prefix(n);
    return { k: this.keys[l].take(prefix), v: this.values[l].take(prefix), tokens: this.tokenAt[l].subarray(0, n) };
  }

  /** [n] 0..n-1, shared and read-only: asks a row store for a view of its first n rows. */
  private identity = new Int32Array(0);
  private prefix(n: number): Int32Array {
    if (this.identity.length < n)
      this.identity = Int32Array.from({ length: Math.max(n, 2 * this.identity.length) }, (_, i) => i);
    return this.identity.subarray(0, n);
  }

  /** Rows of the given tokens at layer l, in their order, as [tokens.length, kvDim] in the cache's format: for tests and persistence. */
  gather(l: number, tokens: Int32Array): { k: RawRows; v: RawRows } {
    const rows = new Int32Array(tokens.length);
    for (let j = 0; j < tokens.length; j++) {
      rows[j] = this.rowOf[l][tokens[j]];
      if (rows[j] < 0) throw new EngineError(`token ${tokens[j]} has no row at layer ${l}`, 'internal');
    }
    return { k: this.keys[l].take(rows), v: this.values[l].take(rows) };
  }

  /** Row i of layer l as f32 copies ([kvDim] each): for persistence and tests. */
  row(l: number, i: number): { k: Float32Array; v: Float32Array } {
    const { k, v } = this.gather(l, Int32Array.of(i));
    return { k: decodeRows(k, this.kvDim).slice(), v: decodeRows(v, this.kvDim).slice() };
  }

  /** Forgets the rows of tokens n.. at every layer; the others close up, in their order. */
  truncate(n: number): void {
    for (let l = 0; l < this.nLayers; l++) {
      const rowOf = this.rowOf[l];
      const tokenAt = this.tokenAt[l];
      let kept = 0;
      for (let s = 0; s < this.counts[l]; s++) {
        const i = tokenAt[s];
        if (i >= n) {
          rowOf[i] = -1;
          continue;
        }
        if (s !== kept) {
          this.keys[l].move(kept, s);
          this.values[l].move(kept, s);
          tokenAt[kept] = i;
          rowOf[i] = kept;
        }
        kept++;
      }
      this.counts[l] = kept;
    }
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
 * What a prefill ranked its tokens by, kept for the decode steps after it (signals other than the
 * paper's, src/engine/policy.ts Ranking): a decode step has only its own token's attention, which
 * under a chat template says little about what the question needs. Transient: every prefill
 * rewrites it, and nothing persists it (a session's next turn starts with a prefill of its own).
 */
export class RankMemo {
  /** layer (of this state) -> [n] token i's score after that layer; NaN where the prefill did not rank i */
  private readonly byLayer = new Map<number, Float32Array>();

  clear(): void {
    this.byLayer.clear();
  }

  /** Records `scores` [m] of the active tokens `active` [m] after layer `layer`, in a sequence of n tokens. */
  remember(layer: number, active: Int32Array, scores: Float32Array, n: number): void {
    const row = new Float32Array(n).fill(NaN); // [n]
    for (let j = 0; j < active.length; j++) row[active[j]] = scores[j];
    this.byLayer.set(layer, row);
  }

  /** The remembered scores of `active` [m] after `layer`, falling back to `own` [m] for tokens the prefill did not rank. */
  recall(layer: number, active: Int32Array, own: Float32Array): Float32Array {
    const row = this.byLayer.get(layer);
    if (!row) return own;
    return Float32Array.from(active, (i, j) => (i < row.length && !Number.isNaN(row[i]) ? row[i] : own[j]));
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
  readonly rankMemo = new RankMemo();

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
    if (config.nLayers > 255)
      throw new EngineError('models with more than 255 layers are not supported', 'unsupported_model');
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

  /** Room for n tokens in all, reserved at once (see KVCache.reserve). */
  reserve(n: number): void {
    this.kv.reserve(n, true);
    this.fitIndexes();
  }

  append(tokens: readonly number[]): void {
    const n = this.tokens.length + tokens.length;
    this.kv.reserve(n);
    this.fitIndexes();
    for (const t of tokens) {
      const i = this.tokens.length;
      this.depth[i] = 0;
      this.bornAt[i] = this.touchedAt[i] = this.revision;
      this.tokens.push(t);
    }
  }

  /** Grows the per-token arrays to the KV cache's capacity. */
  private fitIndexes(): void {
    if (this.kv.capacity > this.depth.length) {
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
  }

  /** Forgets every token from index n on (a chat history that diverged from what is cached). */
  truncate(n: number): void {
    if (n >= this.tokens.length) return;
    this.rankMemo.clear();
    for (const i of this.auxEntries.keys()) if (i >= n) this.auxEntries.delete(i);
    this.kv.truncate(n);
    this.depth.fill(0, n);
    this.tokens.length = n;
  }

  /** Number of (token, layer) K/V rows held. */
  kvEntries(): number {
    let s = 0;
    for (let i = 0; i < this.tokens.length; i++) s += this.depth[i];
    return s;
  }

  /** Bytes this state holds in memory: the KV cache at its capacity, the per-token arrays, the Aux Cache entries. */
  get bytes(): number {
    return this.kv.bytes + this.depth.byteLength + this.touchedAt.byteLength + this.bornAt.byteLength + this.aux.bytes;
  }

  /**
   * The most `bytes` can be once the state holds `n` tokens: the KV cache grown as `append` grows it,
   * and, when steps may park tokens here (`parks`: a LazyLLM schedule), an Aux entry for each of them.
   */
  bytesAt(n: number, parks: boolean): number {
    const cap = this.kv.capacityFor(n);
    const perToken = this.depth.BYTES_PER_ELEMENT + this.touchedAt.BYTES_PER_ELEMENT + this.bornAt.BYTES_PER_ELEMENT;
    return this.kv.bytesAt(cap) + perToken * cap + Math.max(this.aux.bytes, parks ? n * this.aux.dim * 4 : 0);
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

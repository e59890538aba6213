/**
 * Incremental binary serialization of a SequenceState (tokens, per-token depth, KV rows, Aux Cache),
 * for Durable Object storage. Pure: no Worker or Node APIs.
 *
 * A stored state is a log of *chunks*; replaying every chunk in order onto an empty state rebuilds it
 * exactly (byte for byte). `encodeDelta` writes only what changed since the last chunk written
 * (tracked with SequenceState's `touchedAt`/`bornAt` revision stamps and a `StoredView` of what the
 * log already holds), so a chat turn appends its new tokens, the KV rows of layers its revived tokens
 * gained, and its Aux Cache additions/removals; it never rewrites the whole cache.
 *
 * Chunk layout, little-endian, every field 4-byte aligned (so floats are copied as Float32Array):
 *
 *   header (32 bytes)
 *     u32 magic        0x4b4c5a4c ("LZLK" as bytes: 4c 5a 4c 4b)
 *     u16 version      FORMAT_VERSION
 *     u16 flags        0
 *     u32 fingerprint  the model the rows belong to (modelFingerprint); foreign rows are refused
 *     u32 seq          position of this chunk in the log, from 0; a gap or a swap is refused
 *     u32 nOps
 *     u32 payloadBytes
 *     u32 reserved     0
 *     u32 crc32        of header bytes 0..27 followed by the payload
 *   payload: nOps records, each a u32 opcode followed by its fields
 *     1 TRUNCATE  u32 length                       forget tokens from `length` on
 *     2 TOKENS    u32 start, u32 count, count x u32 append token ids (start == current length); depth 0
 *     3 KV        u32 token, u32 from, u32 to, (to-from) x ([kvDim] f32 K, [kvDim] f32 V)
 *                                                  rows of layers from..to-1; from == current depth; depth := to
 *     4 AUX_SET   u32 token, [dim] f32             Aux Cache entry (replaces any earlier one)
 *     5 AUX_DEL   u32 token                        remove the token's Aux Cache entry
 *
 * Ops never span chunks, and one chunk never exceeds `maxChunkBytes` (a KV op is split by layers
 * and a TOKENS op by count when needed), so every chunk fits a Durable Object row (2 MB).
 */
import type { ModelConfig } from '../model/config.js';
import { SequenceState } from './caches.js';

export const FORMAT_VERSION = 1;
export const CHUNK_MAGIC = 0x4b4c5a4c;
export const HEADER_BYTES = 32;
/** Default chunk bound: half the 2 MB Durable Object row limit. */
export const DEFAULT_MAX_CHUNK_BYTES = 1 << 20;

const OP_TRUNCATE = 1;
const OP_TOKENS = 2;
const OP_KV = 3;
const OP_AUX_SET = 4;
const OP_AUX_DEL = 5;

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1)
  throw new Error('state-codec assumes a little-endian platform');

export type StateFormatReason =
  | 'bad_magic'
  | 'unsupported_version'
  | 'checksum_mismatch'
  | 'foreign_model'
  | 'out_of_order'
  | 'malformed';

/** A stored chunk that cannot be trusted: damaged, from another format version or another model. */
export class StateFormatError extends Error {
  override name = 'StateFormatError';
  constructor(
    readonly reason: StateFormatReason,
    message: string,
  ) {
    super(message);
  }
}

// ---- crc32 (IEEE 802.3, as zlib) ----

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(bytes: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/**
 * Identifies the model whose caches a log holds: name, shape and the sha256 of every weight file.
 * A log written for other weights (or another tokenizer) is foreign and must not be replayed.
 */
export function modelFingerprint(m: {
  name: string;
  config: ModelConfig;
  tokenizer: { sha256: string };
  files: {
    embed: ReadonlyArray<{ sha256: string }>;
    layers: ReadonlyArray<{ sha256: string }>;
    head: ReadonlyArray<{ sha256: string }>;
  };
}): number {
  const c = m.config;
  const canon = JSON.stringify([
    m.name,
    [c.dim, c.hiddenDim, c.nLayers, c.nHeads, c.nKvHeads, c.vocabSize, c.seqLen, c.normEps, c.ropeTheta],
    m.tokenizer.sha256,
    m.files.embed.map((f) => f.sha256),
    m.files.layers.map((f) => f.sha256),
    m.files.head.map((f) => f.sha256),
  ]);
  return crc32(new TextEncoder().encode(canon));
}

// ---- what the log already holds ----

/**
 * The state as the stored log reproduces it, reduced to what `encodeDelta` needs to know: how many
 * tokens, each one's depth, which have an Aux Cache entry, the SequenceState revision the log
 * reflects, and the sequence number of the next chunk. Immutable: `encodeDelta` returns a new one,
 * which the caller adopts only once the chunks are stored.
 */
export interface StoredView {
  watermark: number;
  length: number;
  /** [>= length] depth of each stored token */
  depth: Uint8Array;
  aux: ReadonlySet<number>;
  nextSeq: number;
}

/** The view of an empty log. `encodeDelta(seq, emptyView())` writes a full snapshot. */
export function emptyView(): StoredView {
  return { watermark: 0, length: 0, depth: new Uint8Array(0), aux: new Set(), nextSeq: 0 };
}

// ---- writing ----

class ChunkWriter {
  readonly chunks: Uint8Array[] = [];
  private buf: Uint8Array;
  private dv: DataView;
  private off = HEADER_BYTES;
  private nOps = 0;

  constructor(
    private readonly fingerprint: number,
    private seq: number,
    readonly maxBytes: number,
  ) {
    this.buf = new Uint8Array(maxBytes);
    this.dv = new DataView(this.buf.buffer);
  }

  get nextSeq(): number {
    return this.seq;
  }

  /** Room for an op of `bytes` bytes, starting a new chunk if this one is too full. */
  reserve(bytes: number): void {
    if (HEADER_BYTES + bytes > this.maxBytes)
      throw new RangeError(`a ${bytes}-byte record does not fit a ${this.maxBytes}-byte chunk`);
    if (this.off + bytes > this.maxBytes) this.flush();
    this.nOps++;
  }

  u32(v: number): void {
    this.dv.setUint32(this.off, v, true);
    this.off += 4;
  }

  f32s(a: Float32Array): void {
    new Float32Array(this.buf.buffer, this.off, a.length).set(a);
    this.off += a.length * 4;
  }

  flush(): void {
    if (this.nOps === 0) return;
    const out = this.buf.slice(0, this.off);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, CHUNK_MAGIC, true);
    dv.setUint16(4, FORMAT_VERSION, true);
    dv.setUint16(6, 0, true);
    dv.setUint32(8, this.fingerprint, true);
    dv.setUint32(12, this.seq, true);
    dv.setUint32(16, this.nOps, true);
    dv.setUint32(20, this.off - HEADER_BYTES, true);
    dv.setUint32(24, 0, true);
    dv.setUint32(28, chunkCrc(out), true);
    this.chunks.push(out);
    this.seq++;
    this.off = HEADER_BYTES;
    this.nOps = 0;
  }
}

function chunkCrc(chunk: Uint8Array): number {
  return crc32(chunk.subarray(HEADER_BYTES), crc32(chunk.subarray(0, 28)));
}

export interface EncodeOptions {
  fingerprint: number;
  maxChunkBytes?: number;
}

export interface Delta {
  /** chunks to append to the log, in order; empty when nothing changed */
  chunks: Uint8Array[];
  /** the view once these chunks are stored */
  view: StoredView;
  /** payload figures, for statistics */
  newTokens: number;
  kvRows: number;
  auxSet: number;
  auxDeleted: number;
  truncatedTo: number | null;
}

/**
 * The chunks that bring a log at `view` to `seq`'s current state. Seals `seq` (its revision
 * advances), so the next delta starts from here; the caller adopts `delta.view` once stored.
 */
export function encodeDelta(seq: SequenceState, view: StoredView, opts: EncodeOptions): Delta {
  const { kvDim, dim } = seq.config;
  const w = new ChunkWriter(opts.fingerprint, view.nextSeq, opts.maxChunkBytes ?? DEFAULT_MAX_CHUNK_BYTES);
  const n = seq.length;
  const watermark = seq.seal();
  const delta: Delta = { chunks: w.chunks, view, newTokens: 0, kvRows: 0, auxSet: 0, auxDeleted: 0, truncatedTo: null };

  // 1. Truncation: the first stored index that is gone, or was truncated and appended again.
  let keep = Math.min(view.length, n);
  for (let i = 0; i < keep; i++) {
    if (seq.bornAt[i] > view.watermark) {
      keep = i;
      break;
    }
  }
  const depth = new Uint8Array(Math.max(n, 1));
  depth.set(view.depth.subarray(0, keep));
  const aux = new Set([...view.aux].filter((i) => i < keep));
  if (keep < view.length) {
    w.reserve(8);
    w.u32(OP_TRUNCATE);
    w.u32(keep);
    delta.truncatedTo = keep;
  }

  // 2. New tokens.
  const maxIds = Math.floor((w.maxBytes - HEADER_BYTES - 12) / 4);
  for (let s = keep; s < n; ) {
    const count = Math.min(n - s, maxIds);
    w.reserve(12 + 4 * count);
    w.u32(OP_TOKENS);
    w.u32(s);
    w.u32(count);
    for (let i = s; i < s + count; i++) w.u32(seq.tokens[i]);
    s += count;
  }
  delta.newTokens = n - keep;

  // 3. Per token that changed: KV rows of the layers it gained, then its Aux Cache entry.
  const rowBytes = 8 * kvDim;
  const maxLayers = Math.max(1, Math.floor((w.maxBytes - HEADER_BYTES - 16) / rowBytes));
  for (let i = 0; i < n; i++) {
    if (i < keep && seq.touchedAt[i] <= view.watermark) continue;
    const from = depth[i];
    const to = seq.depth[i];
    if (to < from) throw new RangeError(`token ${i}: depth fell from ${from} to ${to} without a truncation`);
    for (let a = from; a < to; ) {
      const b = Math.min(to, a + maxLayers);
      w.reserve(16 + (b - a) * rowBytes);
      w.u32(OP_KV);
      w.u32(i);
      w.u32(a);
      w.u32(b);
      for (let l = a; l < b; l++) {
        const { k, v } = seq.kv.row(l, i);
        w.f32s(k);
        w.f32s(v);
      }
      delta.kvRows += b - a;
      a = b;
    }
    depth[i] = to;
    const h = seq.aux.entries.get(i);
    if (h) {
      if (h.length !== dim) throw new RangeError(`token ${i}: Aux Cache entry of ${h.length} floats, expected ${dim}`);
      w.reserve(8 + 4 * dim);
      w.u32(OP_AUX_SET);
      w.u32(i);
      w.f32s(h);
      aux.add(i);
      delta.auxSet++;
    } else if (aux.has(i)) {
      w.reserve(8);
      w.u32(OP_AUX_DEL);
      w.u32(i);
      aux.delete(i);
      delta.auxDeleted++;
    }
  }
  w.flush();
  delta.view = { watermark, length: n, depth, aux, nextSeq: w.nextSeq };
  return delta;
}

/** Bytes of a full snapshot of `seq` (what `encodeDelta(seq, emptyView())` writes), give or take chunk headers. */
export function snapshotBytes(seq: SequenceState): number {
  const { kvDim, dim } = seq.config;
  const n = seq.length;
  let b = HEADER_BYTES + 12 + 4 * n + seq.aux.size * (8 + 4 * dim);
  for (let i = 0; i < n; i++) if (seq.depth[i] > 0) b += 16 + seq.depth[i] * 8 * kvDim;
  return b;
}

// ---- reading ----

export interface ChunkHeader {
  version: number;
  fingerprint: number;
  seq: number;
  nOps: number;
  payloadBytes: number;
}

/** Checks a chunk's framing and checksum, and that it belongs to this model at this place in the log. */
export function verifyChunk(chunk: Uint8Array, expect: { fingerprint: number; seq: number }): ChunkHeader {
  if (chunk.byteLength < HEADER_BYTES)
    throw new StateFormatError('malformed', `chunk ${expect.seq}: ${chunk.byteLength} bytes, shorter than its header`);
  const dv = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (dv.getUint32(0, true) !== CHUNK_MAGIC)
    throw new StateFormatError('bad_magic', `chunk ${expect.seq}: not a lazy-edge state chunk`);
  const h: ChunkHeader = {
    version: dv.getUint16(4, true),
    fingerprint: dv.getUint32(8, true),
    seq: dv.getUint32(12, true),
    nOps: dv.getUint32(16, true),
    payloadBytes: dv.getUint32(20, true),
  };
  if (h.version !== FORMAT_VERSION)
    throw new StateFormatError(
      'unsupported_version',
      `chunk ${expect.seq}: format version ${h.version}, this build reads ${FORMAT_VERSION}`,
    );
  if (h.payloadBytes !== chunk.byteLength - HEADER_BYTES)
    throw new StateFormatError(
      'malformed',
      `chunk ${expect.seq}: header says ${h.payloadBytes} payload bytes, found ${chunk.byteLength - HEADER_BYTES}`,
    );
  if (dv.getUint32(28, true) !== chunkCrc(chunk))
    throw new StateFormatError('checksum_mismatch', `chunk ${expect.seq}: crc32 mismatch`);
  if (h.fingerprint !== expect.fingerprint)
    throw new StateFormatError(
      'foreign_model',
      `chunk ${expect.seq}: written for model ${hex(h.fingerprint)}, this is ${hex(expect.fingerprint)}`,
    );
  if (h.seq !== expect.seq) throw new StateFormatError('out_of_order', `chunk ${expect.seq} says it is chunk ${h.seq}`);
  return h;
}

const hex = (v: number) => v.toString(16).padStart(8, '0');

/**
 * Applies one verified chunk to `seq`. Every op is checked against the state it applies to (token
 * ranges, depth continuity), so a log that passes the checksum but was assembled wrongly is refused.
 */
export function applyChunk(seq: SequenceState, chunk: Uint8Array, expect: { fingerprint: number; seq: number }): void {
  const h = verifyChunk(chunk, expect);
  const { nLayers, kvDim, dim } = seq.config;
  // Align the payload so floats can be viewed in place (stored blobs usually come at offset 0).
  const bytes = chunk.byteOffset % 4 === 0 ? chunk : chunk.slice();
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let off = HEADER_BYTES;
  const end = bytes.byteLength;
  const bad = (why: string): never => {
    throw new StateFormatError('malformed', `chunk ${expect.seq}: ${why}`);
  };
  const u32 = () => {
    if (off + 4 > end) bad('record runs past the end');
    const v = dv.getUint32(off, true);
    off += 4;
    return v;
  };
  const f32s = (count: number) => {
    if (off + 4 * count > end) bad('record runs past the end');
    const a = new Float32Array(bytes.buffer, bytes.byteOffset + off, count);
    off += 4 * count;
    return a;
  };
  const token = () => {
    const i = u32();
    if (i >= seq.length) bad(`token ${i} beyond the ${seq.length} held`);
    return i;
  };
  for (let k = 0; k < h.nOps; k++) {
    const op = u32();
    switch (op) {
      case OP_TRUNCATE: {
        const len = u32();
        if (len > seq.length) bad(`truncate to ${len} beyond the ${seq.length} held`);
        seq.truncate(len);
        break;
      }
      case OP_TOKENS: {
        const start = u32();
        const count = u32();
        if (start !== seq.length) bad(`tokens appended at ${start}, the state holds ${seq.length}`);
        if (count === 0 || off + 4 * count > end) bad('bad token count');
        const ids: number[] = [];
        for (let j = 0; j < count; j++) {
          const t = u32();
          if (t >= seq.config.vocabSize) bad(`token id ${t} outside the vocabulary`);
          ids.push(t);
        }
        seq.append(ids);
        break;
      }
      case OP_KV: {
        const i = token();
        const from = u32();
        const to = u32();
        if (from !== seq.depth[i] || to <= from || to > nLayers)
          bad(`token ${i}: rows ${from}..${to} do not extend depth ${seq.depth[i]}`);
        for (let l = from; l < to; l++) {
          seq.kv.write(l, Int32Array.of(i), f32s(kvDim), f32s(kvDim));
        }
        seq.deepen(i, to);
        break;
      }
      case OP_AUX_SET: {
        const i = token();
        seq.park(i, f32s(dim).slice());
        break;
      }
      case OP_AUX_DEL: {
        const i = token();
        if (!seq.resume(i)) bad(`token ${i}: no Aux Cache entry to delete`);
        break;
      }
      default:
        bad(`unknown record type ${op}`);
    }
  }
  if (off !== end) bad(`${end - off} bytes after the last record`);
}

/**
 * Rebuilds a state from a whole log, and the view that lets `encodeDelta` continue it.
 * Throws StateFormatError on the first chunk that cannot be trusted.
 */
export function replayLog(
  config: ModelConfig,
  chunks: Iterable<Uint8Array>,
  fingerprint: number,
): { seq: SequenceState; view: StoredView } {
  const seq = new SequenceState(config);
  let n = 0;
  for (const chunk of chunks) applyChunk(seq, chunk, { fingerprint, seq: n++ });
  checkInvariants(seq);
  return { seq, view: viewOf(seq, n) };
}

/** The view of a log of `nextSeq` chunks that rebuilds exactly `seq`. Seals `seq`. */
export function viewOf(seq: SequenceState, nextSeq: number): StoredView {
  return {
    watermark: seq.seal(),
    length: seq.length,
    depth: seq.depth.slice(0, Math.max(seq.length, 1)),
    aux: new Set(seq.aux.entries.keys()),
    nextSeq,
  };
}

/**
 * What every state the engine leaves behind satisfies: each token has been through layer 0, and a
 * token has an Aux Cache entry exactly when it stopped before the last layer.
 */
export function checkInvariants(seq: SequenceState): void {
  const L = seq.config.nLayers;
  for (let i = 0; i < seq.length; i++) {
    const d = seq.depth[i];
    if (d < 1 || d > L) throw new StateFormatError('malformed', `token ${i} has depth ${d}`);
    if (d < L !== seq.aux.entries.has(i))
      throw new StateFormatError('malformed', `token ${i} at depth ${d} ${d < L ? 'lacks' : 'has'} an Aux Cache entry`);
  }
  for (const i of seq.aux.entries.keys())
    if (i >= seq.length)
      throw new StateFormatError('malformed', `Aux Cache entry for token ${i} beyond the ${seq.length} held`);
}

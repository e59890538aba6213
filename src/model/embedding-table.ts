/**
 * The token embedding, looked up in plain code from the rows the embed shards store.
 *
 * A lookup is a gather and one multiply (and add) per value: nothing for onnxruntime to do. Its session
 * would copy the table into the wasm memory, which never shrinks, and need the shard's bytes once more
 * while it is created: SmolLM2's 30 MB of Q8_0 rows cost 47-80 MB of wasm that way (docs/LAYER-GROUPS.md).
 * Here a part's table is a view of the shard's own bytes on the JS heap, and a part that holds nothing
 * else (the split's front) never starts the runtime at all. The shard's graph still says what a lookup
 * is: a test holds this code to onnxruntime running that graph, bit for bit, for every stored form.
 */
import type onnxProto from 'onnx-proto';
import { ModelFormatError } from './errors.js';
import { decodeShard } from './shard-check.js';

const BLOCK = 32;

/** One shard's rows in the form it stores them (src/shards/layer-graphs.ts, ggml-linear.ts, ggml-kernels.ts). */
type StoredRows =
  | { form: 'f32'; x: Float32Array } //                                  [rows, dim]
  | { form: 'int8-rows'; q: Int8Array; scale: Float32Array } //          [rows, dim], [rows]
  | { form: 'q8_0'; qs: Int8Array; d: Float32Array } //                  [rows, dim], [rows, dim / 32]
  | { form: 'q4'; n: Uint8Array; d: Float32Array; m: Float32Array }; //  [rows, dim / 32, 16] nibble pairs (value j low, j + 16 high), [rows, dim / 32] twice

/** Vocabulary rows [start, start + rows) of the table, as one shard stores them. */
export interface EmbeddingPart {
  start: number;
  rows: number;
  stored: StoredRows;
}

function tensorBytes(
  file: string,
  inits: Map<string, onnxProto.onnx.ITensorProto>,
  name: string,
  n: number,
  elem: number,
): Uint8Array {
  const t = inits.get(name);
  const raw = t?.rawData;
  if (!raw || raw.length !== n * elem)
    throw new ModelFormatError(
      file,
      `${name} with ${n} values as raw data`,
      raw ? `${raw.length} bytes` : 'no such tensor',
    );
  return raw;
}

const int8 = (b: Uint8Array) => new Int8Array(b.buffer, b.byteOffset, b.length);
// A tensor's bytes start wherever protobuf put them; a Float32Array view needs 4-byte alignment, else a
// copy (new Uint8Array(b) copies; a Node Buffer's slice() would not).
const float32 = (b: Uint8Array) =>
  b.byteOffset % 4 === 0
    ? new Float32Array(b.buffer, b.byteOffset, b.length / 4)
    : new Float32Array(new Uint8Array(b).buffer);

/** Reads the rows an embed shard holds (its file name is for errors), without a runtime. */
export function embeddingPartOf(
  file: string,
  bytes: Uint8Array,
  start: number,
  rows: number,
  dim: number,
): EmbeddingPart {
  const { inits } = decodeShard(file, bytes);
  const get = (name: string, n: number, elem: number) => tensorBytes(file, inits, name, n, elem);
  const nb = dim / BLOCK;
  let stored: StoredRows;
  if (inits.has('token_embedding')) stored = { form: 'f32', x: float32(get('token_embedding', rows * dim, 4)) };
  else if (inits.has('token_embedding_q'))
    stored = {
      form: 'int8-rows',
      q: int8(get('token_embedding_q', rows * dim, 1)),
      scale: float32(get('token_embedding_scale', rows, 4)),
    };
  else if (inits.has('token_embedding_qs'))
    stored = {
      form: 'q8_0',
      qs: int8(get('token_embedding_qs', rows * dim, 1)),
      d: float32(get('token_embedding_d', rows * nb, 4)),
    };
  else if (inits.has('token_embedding_q4')) {
    stored = {
      form: 'q4',
      n: get('token_embedding_q4', rows * nb * 16, 1),
      d: float32(get('token_embedding_d', rows * nb, 4)),
      m: float32(get('token_embedding_m', rows * nb, 4)),
    };
  } else {
    throw new ModelFormatError(
      file,
      'embedding rows (token_embedding, _q, _qs or _q4)',
      `only ${[...inits.keys()].join(', ') || 'no tensors'}`,
    );
  }
  return { start, rows, stored };
}

/** Writes row r of a part, as f32, to out[at, at + dim): the graph's arithmetic, each step rounded to f32. */
function decodeRow(s: StoredRows, r: number, dim: number, out: Float32Array, at: number): void {
  const o = r * dim;
  switch (s.form) {
    case 'f32':
      out.set(s.x.subarray(o, o + dim), at);
      return;
    case 'int8-rows': {
      const scale = s.scale[r];
      for (let i = 0; i < dim; i++) out[at + i] = s.q[o + i] * scale;
      return;
    }
    case 'q8_0': {
      for (let i = 0; i < dim; i++) out[at + i] = s.qs[o + i] * s.d[((o + i) / BLOCK) | 0];
      return;
    }
    case 'q4': {
      const nb = dim / BLOCK;
      for (let b = 0; b < nb; b++) {
        const d = s.d[r * nb + b];
        const m = s.m[r * nb + b];
        const bytes = (r * nb + b) * 16;
        for (let j = 0; j < 16; j++) {
          const byte = s.n[bytes + j];
          out[at + b * BLOCK + j] = Math.fround((byte & 15) * d) + m;
          out[at + b * BLOCK + j + 16] = Math.fround((byte >> 4) * d) + m;
        }
      }
      return;
    }
  }
}

/** The whole table: its parts in vocabulary order. */
export class EmbeddingTable {
  constructor(
    readonly parts: readonly EmbeddingPart[],
    readonly dim: number,
  ) {}

  /** The table of a model's embed shards (the manifest's parts, in vocabulary order), each read by `bytesOf`. */
  static async fromShards<P extends { file: string; rows: number }>(
    parts: readonly P[],
    dim: number,
    bytesOf: (p: P) => Uint8Array | Promise<Uint8Array>,
  ): Promise<EmbeddingTable> {
    const out: EmbeddingPart[] = [];
    let first = 0;
    for (const p of parts) {
      out.push(embeddingPartOf(p.file, await bytesOf(p), first, p.rows, dim));
      first += p.rows;
    }
    return new EmbeddingTable(out, dim);
  }

  /** ids -> embeddings [ids.length, dim] */
  lookup(ids: readonly number[]): Float32Array {
    const x = new Float32Array(ids.length * this.dim); // [ids.length, dim]
    ids.forEach((id, i) => {
      const p = this.parts.find((q) => id >= q.start && id < q.start + q.rows);
      if (!p) throw new RangeError(`token id ${id} is outside the embedding's rows`);
      decodeRow(p.stored, id - p.start, this.dim, x, i * this.dim);
    });
    return x;
  }

  /** bytes the stored rows take (what the table holds on the JS heap) */
  get bytes(): number {
    let n = 0;
    for (const { stored: s } of this.parts)
      for (const a of Object.values(s)) if (ArrayBuffer.isView(a)) n += a.byteLength;
    return n;
  }
}

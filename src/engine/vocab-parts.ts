/**
 * The embedding table and the classifier may be split by vocabulary rows across several shards (a
 * static asset holds at most 25 MiB). These two functions make the parts look like one table.
 */
import { EMBED_IO, HEAD_IO } from '../model/shard-io.js';
import type { GraphSession } from '../runtime/onnx-runtime.js';

/** One shard covering vocabulary rows [start, start + rows). */
export interface RowPart {
  session: GraphSession;
  start: number;
  rows: number;
}

/** ids -> embeddings [ids.length, dim], each id looked up in the part that holds its row. */
export async function embedTokens(parts: readonly RowPart[], ids: readonly number[], dim: number): Promise<Float32Array> {
  if (parts.length === 1) {
    const out = await parts[0].session.run({ [EMBED_IO.inputs.ids]: { data: BigInt64Array.from(ids, (t) => BigInt(t)), dims: [ids.length] } });
    return out[EMBED_IO.outputs.x].data as Float32Array;
  }
  const x = new Float32Array(ids.length * dim); // [ids.length, dim]
  for (const p of parts) {
    const at: number[] = [];
    ids.forEach((t, i) => t >= p.start && t < p.start + p.rows && at.push(i));
    if (at.length === 0) continue;
    const out = await p.session.run({ [EMBED_IO.inputs.ids]: { data: BigInt64Array.from(at, (i) => BigInt(ids[i] - p.start)), dims: [at.length] } });
    const rows = out[EMBED_IO.outputs.x].data as Float32Array; // [at.length, dim]
    at.forEach((i, j) => x.set(rows.subarray(j * dim, (j + 1) * dim), i * dim));
  }
  return x;
}

/** The logits of the vocabulary rows some parts hold: one [rows] array per part, with its first row. */
export async function headPartLogits(parts: readonly RowPart[], h: Float32Array, dim: number): Promise<{ start: number; logits: Float32Array }[]> {
  const out: { start: number; logits: Float32Array }[] = [];
  for (const p of parts) out.push({ start: p.start, logits: (await p.session.run({ [HEAD_IO.inputs.x]: { data: h, dims: [1, dim] } }))[HEAD_IO.outputs.logits].data as Float32Array });
  return out;
}

/** The last hidden state [dim] -> logits [vocab], concatenated from every part. */
export async function headLogits(parts: readonly RowPart[], h: Float32Array, dim: number, vocab: number): Promise<Float32Array> {
  const run = async (p: RowPart) => (await p.session.run({ [HEAD_IO.inputs.x]: { data: h, dims: [1, dim] } }))[HEAD_IO.outputs.logits].data as Float32Array;
  if (parts.length === 1) return run(parts[0]);
  const logits = new Float32Array(vocab); // [vocab]
  for (const p of parts) logits.set(await run(p), p.start);
  return logits;
}

/**
 * The classifier may be split by vocabulary rows across several shards (a static asset holds at most
 * 25 MiB), and across objects in a split model. These functions make the parts look like one matrix.
 * (The embedding is split alike but looked up without the runtime: src/model/embedding-table.ts.)
 */
import { HEAD_IO } from '../model/shard-io.js';
import type { GraphSession } from '../runtime/onnx-runtime.js';

/** One shard covering vocabulary rows [start, start + rows). */
export interface RowPart {
  session: GraphSession;
  start: number;
  rows: number;
}

/** The logits of the vocabulary rows some parts hold: one [rows] array per part, with its first row. */
export async function headPartLogits(
  parts: readonly RowPart[],
  h: Float32Array,
  dim: number,
): Promise<{ start: number; logits: Float32Array }[]> {
  const out: { start: number; logits: Float32Array }[] = [];
  for (const p of parts)
    out.push({
      start: p.start,
      logits: (await p.session.run({ [HEAD_IO.inputs.x]: { data: h, dims: [1, dim] } }))[HEAD_IO.outputs.logits]
        .data as Float32Array,
    });
  return out;
}

/** The last hidden state [dim] -> logits [vocab], concatenated from every part. */
export async function headLogits(
  parts: readonly RowPart[],
  h: Float32Array,
  dim: number,
  vocab: number,
): Promise<Float32Array> {
  const run = async (p: RowPart) =>
    (await p.session.run({ [HEAD_IO.inputs.x]: { data: h, dims: [1, dim] } }))[HEAD_IO.outputs.logits]
      .data as Float32Array;
  if (parts.length === 1) return run(parts[0]);
  const logits = new Float32Array(vocab); // [vocab]
  for (const p of parts) logits.set(await run(p), p.start);
  return logits;
}

/**
 * The embedding looked up in plain code (src/model/embedding-table.ts) against onnxruntime running the
 * embed shard's own graph, bit for bit, for every form a shard stores rows in, and for the shards the
 * setup builds (stories260K's f32 table, SmolLM2's Q8_0 rows in two parts).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { initNodeRuntime, readBytes, shardsDir } from '../../scripts/lib/node-env.js';
import { servedShardsDir } from '../../scripts/lib/served-model.js';
import type { ModelConfig } from '../../src/model/config.js';
import { EmbeddingTable, embeddingPartOf } from '../../src/model/embedding-table.js';
import { ModelFormatError } from '../../src/model/errors.js';
import { parseManifest } from '../../src/model/manifest.js';
import { createRng } from '../../src/model/prng.js';
import { EMBED_IO } from '../../src/model/shard-io.js';
import { createGraphSession } from '../../src/runtime/onnx-runtime.js';
import { q4EmbedRows } from '../../src/shards/ggml-kernels.js';
import { ggmlEmbedRows } from '../../src/shards/ggml-linear.js';
import { buildEmbedGraph, buildHeadGraph, embedGraph, f32Format } from '../../src/shards/layer-graphs.js';
import { Q4_1, Q8_0, randomBlocks } from '../support/ggml-blocks.js';

const DIM = 64;
const ROWS = 40;

beforeAll(() => initNodeRuntime());

/** What onnxruntime gives running an embed shard on these ids (relative to the shard's first row). */
async function viaRuntime(bytes: Uint8Array, ids: readonly number[]): Promise<Float32Array> {
  const s = await createGraphSession('embed', bytes);
  try {
    const out = await s.run({
      [EMBED_IO.inputs.ids]: { data: BigInt64Array.from(ids, (t) => BigInt(t)), dims: [ids.length] },
    });
    return (out[EMBED_IO.outputs.x].data as Float32Array).slice();
  } finally {
    s.release();
  }
}

const bitsOf = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

function randomTable(rows: number, dim: number, seed: number): Float32Array {
  const rng = createRng(seed);
  return Float32Array.from({ length: rows * dim }, () => (rng.next() * 2 - 1) * 0.37);
}

// every row once, then repeats and out of order: a lookup is a gather
const IDS = [...Array.from({ length: ROWS }, (_, i) => i), 39, 0, 7, 7, 21];

describe('the embedding in plain code gives what onnxruntime gives on the shard, bit for bit', () => {
  const cfg = { dim: DIM } as ModelConfig;
  const forms: [string, () => Uint8Array][] = [
    ['f32 rows (a checkpoint build)', () => buildEmbedGraph(cfg, randomTable(ROWS, DIM, 1))],
    [
      'int8 rows with a scale per row (a quantized checkpoint build)',
      () => buildEmbedGraph(cfg, randomTable(ROWS, DIM, 2), true),
    ],
    [
      'Q8_0 rows (a GGUF build, embed=q8)',
      () => embedGraph(DIM, (b, ids) => ggmlEmbedRows(b, ids, randomBlocks(Q8_0, ROWS, DIM, 3))),
    ],
    [
      '4-bit rows with a scale and minimum per block (embed=q4)',
      () => embedGraph(DIM, (b, ids) => q4EmbedRows(b, ids, randomBlocks(Q4_1, ROWS, DIM, 4))),
    ],
  ];
  for (const [what, build] of forms) {
    it(what, async () => {
      const bytes = build();
      const js = new EmbeddingTable([embeddingPartOf('embed.onnx', bytes, 0, ROWS, DIM)], DIM).lookup(IDS);
      const ort = await viaRuntime(bytes, IDS);
      expect(js.length).toBe(IDS.length * DIM);
      expect(bitsOf(js)).toEqual(bitsOf(ort));
    });
  }

  it('looks each id up in the part that holds its row', async () => {
    const a = embedGraph(DIM, (b, ids) => ggmlEmbedRows(b, ids, randomBlocks(Q8_0, 24, DIM, 5)));
    const b2 = embedGraph(DIM, (b, ids) => ggmlEmbedRows(b, ids, randomBlocks(Q8_0, 16, DIM, 6)));
    const table = new EmbeddingTable(
      [embeddingPartOf('embed_0.onnx', a, 0, 24, DIM), embeddingPartOf('embed_1.onnx', b2, 24, 16, DIM)],
      DIM,
    );
    const ids = [30, 2, 23, 24, 39, 0];
    const js = table.lookup(ids);
    for (const [i, id] of ids.entries()) {
      const want = id < 24 ? await viaRuntime(a, [id]) : await viaRuntime(b2, [id - 24]);
      expect(bitsOf(js.subarray(i * DIM, (i + 1) * DIM))).toEqual(bitsOf(want));
    }
    expect(() => table.lookup([40])).toThrow(/token id 40 is outside/);
  });

  it('refuses a shard that holds no embedding rows, naming the file and what it holds', () => {
    const head = buildHeadGraph(
      { dim: DIM, normEps: 1e-5 } as ModelConfig,
      new Float32Array(DIM).fill(1),
      randomTable(8, DIM, 7),
      8,
      f32Format().linear,
    );
    expect(() => embeddingPartOf('head.onnx', head, 0, 8, DIM)).toThrow(ModelFormatError);
    expect(() => embeddingPartOf('head.onnx', head, 0, 8, DIM)).toThrow(
      /head\.onnx: expected embedding rows .* found only /,
    );
    expect(() => embeddingPartOf('junk.onnx', new Uint8Array([0xff, 0xff, 0xff]), 0, 8, DIM)).toThrow(
      /junk\.onnx: expected an ONNX model/,
    );
  });
});

describe.each([
  ['stories260K', shardsDir('stories260K')],
  ['SmolLM2 (served)', servedShardsDir()],
])('the %s shards', (_name, dir) => {
  it.skipIf(!existsSync(join(dir, 'manifest.json')))('look up as onnxruntime runs them', async () => {
    const m = parseManifest(readFileSync(join(dir, 'manifest.json'), 'utf8'));
    const { dim, vocabSize } = m.config;
    const table = await EmbeddingTable.fromShards(m.files.embed, dim, (p) => readBytes(join(dir, p.file)));
    const { parts } = table;
    expect(parts.reduce((n, p) => n + p.rows, 0)).toBe(vocabSize);
    const rng = createRng(11);
    const ids = [0, vocabSize - 1, ...Array.from({ length: 30 }, () => Math.floor(rng.next() * vocabSize))];
    const js = table.lookup(ids);
    for (const p of parts) {
      const mine = ids.flatMap((id, i) => (id >= p.start && id < p.start + p.rows ? [i] : []));
      const ort = await viaRuntime(
        readBytes(join(dir, m.files.embed[parts.indexOf(p)].file)),
        mine.map((i) => ids[i] - p.start),
      );
      for (const [j, i] of mine.entries())
        expect(bitsOf(js.subarray(i * dim, (i + 1) * dim))).toEqual(bitsOf(ort.subarray(j * dim, (j + 1) * dim)));
    }
  });
});

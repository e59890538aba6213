/**
 * GGUF import: the model description read from the shared SmolLM2 file (every value checked against
 * what SOURCE.md lists, read there with the `gguf` Python reader), the shards it becomes, and the
 * files it refuses (by `npm run shards -- --gguf`, before anything is written).
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { readGgufHeader } from '../../scripts/lib/gguf-file.js';
import { SHARED_GGUF, servedShardsDir } from '../../scripts/lib/served-model.js';
import { MAX_SHARD_BYTES } from '../../src/shards/build-shards.js';
import { parseGgufModel, type GgufModel } from '../../src/model/gguf-model.js';
import { parseManifest } from '../../src/model/manifest.js';

const GGUF = process.env.LAZY_EDGE_GGUF ?? SHARED_GGUF;
const REPO = new URL('../../', import.meta.url).pathname;

let model: GgufModel;
beforeAll(async () => {
  model = parseGgufModel(await readGgufHeader(GGUF), GGUF);
});

describe('GGUF model description', () => {
  it('takes every configuration value from the metadata', () => {
    expect(model.config).toEqual({
      dim: 576,
      hiddenDim: 1536,
      nLayers: 30,
      nHeads: 9,
      nKvHeads: 3,
      vocabSize: 49152,
      seqLen: 8192,
      headSize: 64,
      kvDim: 192,
      normEps: Math.fround(1e-5),
      ropeTheta: 100000,
    });
    expect(model.tiedHead).toBe(true);
    expect(model.head).toBe(model.embedding);
    expect(model.ropeFreqFactors).toBeUndefined();
    expect(model.tokenizer).toMatchObject({ model: 'gpt2', pre: 'smollm', bosId: 1, eosId: 2, addBos: false });
    expect(model.tokenizer.tokens.length).toBe(49152);
    expect(model.tokenizer.merges.length).toBe(48900);
    expect(model.chatTemplate).toMatch(/^\{% for message in messages %\}.*<\|im_start\|>/s);
  });

  it('keeps each matrix in the type the file stores it (Q4_1 blocks, a Q8_0 embedding)', () => {
    const q = model.layers[0].wq;
    expect({ type: q.type, out: q.out, inp: q.inp, bytes: q.data.byteLength }).toEqual({
      type: 3,
      out: 576,
      inp: 576,
      bytes: (576 * 576 * 20) / 32,
    });
    expect(model.layers[29].w2).toMatchObject({ type: 3, out: 576, inp: 1536 });
    expect({ type: model.embedding.type, bytes: model.embedding.data.byteLength }).toEqual({
      type: 8,
      bytes: 30081024,
    });
  });

  it('the served shards stay under the 25 MiB static-asset limit and the manifest says how they were made', () => {
    const m = parseManifest(readFileSync(join(servedShardsDir(), 'manifest.json'), 'utf8'));
    const files = [m.tokenizer, ...m.files.embed, ...m.files.layers, ...m.files.head];
    for (const f of files) expect(f.bytes, f.file).toBeLessThanOrEqual(MAX_SHARD_BYTES);
    expect(m.files.embed.length).toBeGreaterThan(1); // 30 MB of Q8_0 rows do not fit one asset
    expect(m.quant).toEqual({ format: 'gguf', kernel: 'dequant' });
    expect(m.tokenizer).toMatchObject({ format: 'hf-bpe', bosId: 1, eosId: 2, addBos: false, endIds: [0, 2] });
    expect(m.source.sha256).toBe('b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53');
  });
});

describe('npm run shards -- --gguf refuses a bad file before writing anything', () => {
  const dir = mkdtempSync(join(tmpdir(), 'gguf-bad-'));
  const file = readFileSync(GGUF);
  const cases: Array<[string, () => Buffer, RegExp]> = [
    [
      'another architecture',
      () => {
        const b = Buffer.from(file);
        const at = b.indexOf('general.architecture');
        // key, then u32 type 8 (string), u64 length 5, "llama": same length, so the header stays valid
        const value = at + 'general.architecture'.length + 4 + 8;
        expect(b.subarray(value, value + 5).toString()).toBe('llama');
        b.write('gemma', value);
        return b;
      },
      /general\.architecture "llama".*found "gemma"/,
    ],
    ['a truncated file', () => file.subarray(0, 60_000_000), /truncated/],
    [
      'an unknown tensor type',
      () => {
        const b = Buffer.from(file);
        const name = 'blk.0.attn_q.weight';
        const at = b.indexOf(name);
        const type = at + name.length + 4 + 2 * 8; // after n_dims (u32) and two u64 dims
        expect(b.readUInt32LE(type)).toBe(3); // Q4_1
        b.writeUInt32LE(10, type); // Q2_K: a type this build does not read
        return b;
      },
      /blk\.0\.attn_q\.weight of type 10|blk\.0\.attn_q\.weight of Q2_K/,
    ],
  ];
  for (const [what, make, message] of cases) {
    it(what, async () => {
      const path = join(dir, `${what.replace(/\W+/g, '-')}.gguf`);
      writeFileSync(path, make());
      const out = join(dir, `out-${what.replace(/\W+/g, '-')}`);
      const run = promisify(execFile)(
        `${REPO}node_modules/.bin/tsx`,
        ['scripts/shards.ts', '--gguf', path, '--out', out],
        { cwd: REPO },
      );
      const err = (await run.then(
        () => null,
        (e: { code: number; stderr: string }) => e,
      ))!;
      expect(err?.code).toBe(2);
      expect(err.stderr).toMatch(message);
      expect(err.stderr).not.toMatch(/\n\s+at /); // a message, not a stack
      expect(existsSync(out)).toBe(false);
      rmSync(path);
    });
  }
});

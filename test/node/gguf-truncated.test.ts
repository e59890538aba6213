/**
 * A GGUF cut anywhere is refused with what is cut, and a path that cannot be read with why (issue
 * 26, item 8): copies of the shared SmolLM2 file cut inside the magic, the version, a metadata key,
 * the tokenizer's token list, a tensor description and the tensor data, written to a temporary
 * directory, through readGgufHeader and through `npm run shards -- --gguf`.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { readGgufHeader, unreadableReason } from '../../scripts/lib/gguf-file.js';
import { SHARED_GGUF } from '../../scripts/lib/served-model.js';

const REPO = new URL('../../', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'gguf-cut-'));
const file = readFileSync(SHARED_GGUF);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** offset of the first occurrence of `text` in the header (its bytes follow a u64 length) */
const at = (text: string) => {
  const i = file.indexOf(text);
  expect(i).toBeGreaterThan(0);
  return i;
};

function cutAt(name: string, bytes: number): string {
  const path = join(dir, `${name}.gguf`);
  writeFileSync(path, file.subarray(0, bytes));
  return path;
}

describe('readGgufHeader on a cut file', () => {
  const q = 'blk.0.attn_q.weight';
  const cases: Array<[string, () => number, RegExp]> = [
    [
      'inside the magic',
      () => 2,
      /expected a GGUF file \(4 bytes of magic "GGUF" and a header\), found 2 bytes: the file is truncated/,
    ],
    ['inside the version', () => 6, /found a file of 6 bytes that ends inside the version: the header is truncated/],
    ['inside the metadata count', () => 20, /ends inside the metadata entry count/],
    [
      'inside a metadata key',
      () => at('general.architecture') + 7,
      /ends inside the key of metadata entry 1 of \d+ \(20 bytes\)/,
    ],
    [
      'inside a value',
      () => at('general.architecture') + 'general.architecture'.length + 4 + 8 + 2,
      /ends inside the value of metadata entry 1 of \d+ \(general\.architecture\) \(5 bytes\)/,
    ],
    [
      'inside the token list',
      () => at('tokenizer.ggml.tokens') + 5000,
      /ends inside .*element \d+ of 49152 of the value of metadata entry \d+ of \d+ \(tokenizer\.ggml\.tokens\)/,
    ],
    // after the name (19 bytes): u32 dimension count, then two u64 dimensions
    [
      'inside a tensor description',
      () => at(q) + q.length + 4 + 3,
      new RegExp(`ends inside the dimensions of tensor description \\d+ of \\d+ \\(${q.replaceAll('.', '\\.')}\\)`),
    ],
    [
      'in the tensor data',
      () => 60_000_000,
      /expected \d+ bytes at least \(tensor \S+ ends there\), found 60000000 bytes: the file is truncated/,
    ],
  ];
  it.each(cases)('%s', async (name, bytes, message) => {
    const n = bytes();
    expect(n).toBeLessThan(file.length);
    await expect(readGgufHeader(cutAt(name.replace(/\W+/g, '-'), n))).rejects.toThrow(message);
  });

  it('reads the whole file', async () => {
    const h = await readGgufHeader(SHARED_GGUF);
    expect(h.tensors.some((t) => t.name === q)).toBe(true);
  });
});

describe('npm run shards -- --gguf says why a path cannot be read', () => {
  const shards = async (path: string) => {
    const run = promisify(execFile)(
      `${REPO}node_modules/.bin/tsx`,
      ['scripts/shards.ts', '--gguf', path, '--out', join(dir, 'out')],
      { cwd: REPO },
    );
    const err = (await run.then(
      () => null,
      (e: { code: number; stderr: string }) => e,
    ))!;
    expect(err?.code).toBe(2);
    expect(err.stderr).not.toMatch(/\n\s+at /); // a message, not a stack
    return err.stderr;
  };

  it('a missing file, a directory and a cut header', async () => {
    const missing = join(dir, 'missing.gguf');
    expect(await shards(missing)).toContain(`cannot read ${missing}: no such file`);
    const folder = join(dir, 'folder.gguf');
    mkdirSync(folder);
    expect(await shards(folder)).toContain(`cannot read ${folder}: a directory, not a file`);
    const cut = cutAt('cli-cut', at('tokenizer.ggml.merges') + 100);
    expect(await shards(cut)).toMatch(
      /ends inside .*of the value of metadata entry \d+ of \d+ \(tokenizer\.ggml\.merges\): the header is truncated/,
    );
  });

  it.each([
    ['EACCES', 'permission denied'],
    ['ENOTDIR', 'not a directory'],
    ['EISDIR', 'a directory'],
  ])('%s is told in words', (code, words) => {
    expect(unreadableReason(Object.assign(new Error('x'), { code }))).toContain(words);
  });
});

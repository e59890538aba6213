import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../scripts/lib/node-env.js';

function shards(args: string[]) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'scripts', 'shards.ts'), ...args], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const RANDOM = ['--random', 'dim=32,layers=1,heads=4,hidden=64,seed=2', '--name', 'q'];
const quantOf = (dir: string) => JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')).quant;

describe('npm run shards --quant', () => {
  it.each([
    [['--quant', 'int3'], /--quant "int3" is not one of f32, int8, int4/],
    [['--quant', 'int4', '--block-size', '24'], /--block-size 24 must be a power of two/],
    [['--quant', 'int8', '--kernel', 'nbits'], /--kernel "nbits" cannot run int8 weights/],
    [['--quant', 'int8', '--block-size', '32'], /--block-size only applies to int4/],
    [['--kernel', 'integer'], /--kernel and --block-size need --quant/],
  ])('rejects %j with a clear message', (args, message) => {
    const r = shards([...RANDOM, '--out', join(mkdtempSync(join(tmpdir(), 'lazy-edge-')), 'q'), ...args]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(message);
  });

  it('records the format, and --if-missing rebuilds only when the format asked for differs', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'lazy-edge-')), 'q');
    expect(shards([...RANDOM, '--out', out, '--quant', 'int4', '--block-size', '16', '--kernel', 'nbits']).code).toBe(
      0,
    );
    expect(quantOf(out)).toEqual({ format: 'int4', kernel: 'nbits', blockSize: 16 });

    const same = shards([
      ...RANDOM,
      '--out',
      out,
      '--quant',
      'int4',
      '--block-size',
      '16',
      '--kernel',
      'nbits',
      '--if-missing',
    ]);
    expect(same.stderr).toMatch(/shards up to date: .* \(int4-b16\/nbits\)/);

    for (const [args, quant] of [
      [['--block-size', '32', '--kernel', 'nbits'], { format: 'int4', kernel: 'nbits', blockSize: 32 }],
      [['--block-size', '32'], { format: 'int4', kernel: 'dequant', blockSize: 32 }],
    ] as const) {
      const r = shards([...RANDOM, '--out', out, '--quant', 'int4', ...args, '--if-missing']);
      expect(r.code).toBe(0);
      expect(r.stderr).toMatch(/building SYNTHETIC/);
      expect(quantOf(out)).toEqual(quant);
    }
    // Without --quant, the size-based default: int8 folded at load for a model this small.
    expect(shards([...RANDOM, '--out', out, '--if-missing']).stderr).toMatch(/building SYNTHETIC .*int8\/dequant/);
    expect(quantOf(out)).toEqual({ format: 'int8', kernel: 'dequant' });
  });
});

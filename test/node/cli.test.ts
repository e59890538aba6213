import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../scripts/lib/node-env.js';
import { greedySampleText } from '../support/paths.js';

function run(script: string, args: string[]) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'scripts', script), ...args], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('npm run generate', () => {
  it('prints exactly one JSON object with --json, reproducing the greedy sample from an empty prompt', () => {
    // llama2.c's sample is exact for f32 weights; the default shards are quantized (docs/QUANTIZATION.md).
    const f32 = join(mkdtempSync(join(tmpdir(), 'lazy-edge-')), 'f32');
    expect(run('shards.ts', ['--quant', 'f32', '--out', f32]).code).toBe(0);
    const r = run('generate.ts', [
      '--model',
      f32,
      '--prompt',
      '',
      '--max-tokens',
      '256',
      '--temperature',
      '0',
      '--lazy',
      'off',
      '--json',
    ]);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const out = JSON.parse(lines[0]);
    expect(out.text).toBe(greedySampleText());
    expect(out.tokens).toHaveLength(256);
    expect(out.prompt_tokens).toBe(1);
    expect(out.finish_reason).toBe('length');
    expect(out.stats.prefill_ms).toBeGreaterThan(0);
    expect(out.stats.decode_ms).toBeGreaterThan(0);
    expect(out.stats.computed_per_layer).toEqual([256, 256, 256, 256, 256]);
  });

  it('runs lazy by default and reports the rows each layer computed', () => {
    const prompt = 'Once upon a time there was a cat. The cat liked to sleep in the sun. '.repeat(16);
    const r = run('generate.ts', ['--prompt', prompt, '--max-tokens', '8', '--temperature', '0', '--json']);
    expect(r.code).toBe(0);
    const { stats } = JSON.parse(r.stdout);
    expect(stats.schedule).not.toBe('dense');
    expect(stats.prefill_computed_per_layer[0]).toBe(stats.prompt_tokens);
    expect(stats.prefill_computed_per_layer.at(-1)).toBeLessThan(stats.prompt_tokens);
  });

  it.each([
    [['--max-tokens', 'lots'], /--max-tokens must be a number/],
    [['--lazy', 'maybe'], /--lazy must be "on" or "off"/],
    [['--schedule', '9:0.5'], /layer 9 does not exist/],
    [['--temperature=-1'], /temperature -1 must be/],
  ])('rejects %j with a clear message and a non-zero exit', (args, message) => {
    const r = run('generate.ts', ['--prompt', 'hi', ...args]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
  });
});

describe('npm run shards', () => {
  it('names the file and what was wrong when the checkpoint is malformed', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lazy-edge-'));
    const bad = join(dir, 'bad.bin');
    writeFileSync(bad, new Uint8Array(10));
    const r = run('shards.ts', ['--checkpoint', bad, '--out', join(dir, 'out')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(bad);
    expect(r.stderr).toMatch(/expected .*found/);
  });

  it('writes a seeded random model labelled as synthetic', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lazy-edge-'));
    const out = join(dir, 'rand');
    const r = run('shards.ts', [
      '--random',
      'dim=64,layers=2,heads=4,kv_heads=2,seed=3',
      '--name',
      'rand',
      '--out',
      out,
    ]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/SYNTHETIC/);
    const g = run('generate.ts', [
      '--model',
      out,
      '--prompt',
      'hello',
      '--max-tokens',
      '5',
      '--temperature',
      '0',
      '--json',
    ]);
    expect(g.code).toBe(0);
    expect(JSON.parse(g.stdout).tokens.length).toBeGreaterThan(0);
  });
});

describe('npm run eval and npm run calibrate take the signal items of a schedule', () => {
  const stories = join(REPO_ROOT, 'model-shards', 'stories260K');
  const data = join(REPO_ROOT, '../shared/data/tinystories-dev.txt');

  it('eval on text ranks by a window; a chat task ranks by its question; a bad item is a clear error', () => {
    const text = run('quality/eval.ts', [
      '--model',
      stories,
      '--data',
      data,
      '--tokens',
      '128',
      '--prompts',
      '2',
      '--next',
      '8',
      '--continuation',
      '0',
      '--reps',
      '1',
      '--schedule',
      'bos,signal:window:8,heads:max,pool:3,1:0.5,3:0.5',
      '--json',
    ]);
    expect(text.code, text.stderr).toBe(0);
    const t = JSON.parse(text.stdout);
    expect(t.schedule).toBe('bos,signal:window:8,heads:max,pool:3,1:0.5,3:0.5');
    expect(t.summary['128'].prefill_flops_ratio).toBeLessThan(1);
    const tasks = run('quality/eval.ts', [
      '--model',
      stories,
      '--tasks',
      'passkey',
      '--tokens',
      '200',
      '--prompts',
      '1',
      '--schedule',
      'signal:query,heads:max,pool:3,1:0.5,3:0.5',
      '--json',
    ]);
    expect(tasks.code, tasks.stderr).toBe(0);
    const bad = run('quality/eval.ts', [
      '--model',
      stories,
      '--data',
      data,
      '--tokens',
      '128',
      '--prompts',
      '1',
      '--schedule',
      'signal:question,1:0.5',
    ]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/signal:last\|query\|window:K/);
  });

  it('calibrate sweeps signal x schedule on chat tasks, every schedule beside dense, and plots the frontier from its JSON', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lazy-edge-calibrate-'));
    const r = run('quality/calibrate.ts', [
      '--model',
      stories,
      '--tasks',
      'passkey',
      '--tokens',
      '200',
      '--prompts',
      '1',
      '--schedules',
      'bos,1:0.5,3:0.5;bos,signal:query,heads:max,pool:3,1:0.5,3:0.5',
      '--json',
      '--out',
      join(dir, 'sweep.svg'),
    ]);
    expect(r.code, r.stderr).toBe(0);
    const sweep = JSON.parse(r.stdout);
    expect(sweep.points.map((p: { schedule: string }) => p.schedule).sort()).toEqual([
      'bos,1:0.5,3:0.5',
      'bos,signal:query,heads:max,pool:3,1:0.5,3:0.5',
    ]);
    for (const p of sweep.points) expect(p.prefill_flops_ratio).toBeLessThan(1);
    writeFileSync(join(dir, 'sweep.json'), r.stdout);
    const plot = run('quality/calibrate.ts', ['--plot', join(dir, 'sweep.json'), '--out', join(dir, 'frontier.svg')]);
    expect(plot.code, plot.stderr).toBe(0);
  });
});

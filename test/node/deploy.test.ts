/**
 * npm run deploy -- --dry-run (scripts/deploy.ts) on stories260K's topology: every Worker is bundled as
 * wrangler would upload it and checked against Cloudflare's limits, in deployment order (each Worker
 * after the ones it binds); a setting it cannot deploy stops it with the reason and exit code 2.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

const out = mkdtempSync(join(tmpdir(), 'lazy-edge-deploy-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

const deploy = (vars: string[], dir: string) =>
  spawnSync(
    join(REPO_ROOT, 'node_modules/.bin/tsx'),
    ['scripts/deploy.ts', '--dry-run', '--out', relative(REPO_ROOT, dir), ...vars.flatMap((v) => ['--var', v])],
    { cwd: REPO_ROOT, encoding: 'utf8', timeout: 600_000 },
  );

describe('npm run deploy -- --dry-run', () => {
  it('bundles every Worker of the topology in deployment order, each within the limits, with only its own shards', () => {
    const dir = join(out, 'ok');
    const r = deploy(['MODEL_NAME=stories260K', 'LAYER_GROUPS=2', 'HEAD_GROUPS=1', 'EMBED_IN_FRONT=1'], dir);
    expect(r.status, r.stderr).toBe(0);
    const rows = r.stdout.trim().split('\n');
    expect(rows.at(-1)).toBe("deploy --dry-run: 4 Workers bundled and within Cloudflare's limits");
    // each after the Workers it binds: group 0 binds group 1 (it hands the frontier on), the front binds all
    expect(rows.slice(0, -1).map((l) => l.split(/\s+/).slice(0, 2))).toEqual([
      ['lazy-edge-classifier-0', 'classifier'],
      ['lazy-edge-group-1', 'group'],
      ['lazy-edge-group-0', 'group'],
      ['lazy-edge', 'front'],
    ]);
    // Each bundle is what wrangler would upload: the entry module and onnxruntime's wasm.
    for (const w of ['lazy-edge-group-0', 'lazy-edge']) expect(existsSync(join(dir, w, 'bundle'))).toBe(true);
    const front = JSON.parse(readFileSync(join(dir, 'lazy-edge', 'wrangler.json'), 'utf8')) as {
      durable_objects: { bindings: { name: string; script_name?: string }[] };
    };
    expect(front.durable_objects.bindings.filter((b) => b.script_name).map((b) => b.script_name)).toEqual([
      'lazy-edge-group-0',
      'lazy-edge-group-1',
      'lazy-edge-classifier-0',
    ]);
  }, 600_000);

  it('stops with the reason and exit code 2 on a topology it cannot deploy', () => {
    const r = deploy(['MODEL_NAME=stories260K', 'LAYER_GROUPS=1'], join(out, 'bad'));
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/^deploy: .*needs at least 2/m);
  }, 600_000);
});

/**
 * Builds what the playground's "run in this browser" downloads besides the model (src/playground/
 * runtime-files.ts describes the layout): the page's engine bundle and onnxruntime-web's WebGPU-build
 * binary in parts within Cloudflare's 25 MiB per-asset limit, written with their list into
 * `<assets directory>/_playground/`, where the Worker serves them from its assets (the binary as a
 * Data module would sit in the front's isolate memory on every request, docs/WEBGPU.md). Run by
 * scripts/setup.ts (so `npm start`, `npm test` and `npm run deploy` find it) and rebuilt whenever
 * called: esbuild takes about a second.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  PLAYGROUND_ASSETS_DIR,
  RUNTIME_LIST,
  WASM_PART_BYTES,
  type RuntimeFile,
  type RuntimeList,
} from '../../src/playground/runtime-files.js';
import { BROWSER_WASM, bundleForBrowser } from './browser-bundle.js';
import { SHARDS_ROOT } from './node-env.js';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** `name` with the start of its content's hash before the extension: a URL always means the same bytes. */
function entry(name: string, ext: string, bytes: Uint8Array): RuntimeFile & { data: Uint8Array } {
  const hash = sha256(bytes);
  return { file: `${name}.${hash.slice(0, 16)}${ext}`, sha256: hash, bytes: bytes.byteLength, data: bytes };
}

/** Writes `<assetsDir>/_playground/` afresh (files, then the list); returns its path and the list. */
export async function buildPlaygroundAssets(
  assetsDir = SHARDS_ROOT,
): Promise<{ dir: string; list: RuntimeList; files: string[] }> {
  const tmp = mkdtempSync(join(tmpdir(), 'lazy-edge-playground-bundle-'));
  try {
    await bundleForBrowser({ engine: 'src/playground/in-browser.ts' }, tmp);
    const engine = entry('engine', '.js', readFileSync(join(tmp, 'engine.js')));
    const wasm = readFileSync(join(tmp, BROWSER_WASM));
    const parts: (RuntimeFile & { data: Uint8Array })[] = [];
    for (let at = 0, i = 0; at < wasm.byteLength; at += WASM_PART_BYTES, i++)
      parts.push(entry(`ort-asyncify.part${i}`, '.bin', wasm.subarray(at, at + WASM_PART_BYTES)));
    const strip = ({ data: _data, ...e }: RuntimeFile & { data: Uint8Array }): RuntimeFile => e;
    const list: RuntimeList = {
      engine: strip(engine),
      wasm: { file: BROWSER_WASM, sha256: sha256(wasm), bytes: wasm.byteLength, parts: parts.map(strip) },
    };
    // a fresh folder swapped in whole: a server reading the old one never sees a half-written list
    const dir = join(assetsDir, PLAYGROUND_ASSETS_DIR);
    // per process: two builds at once (a test's and the global setup's) never write the same folder
    const next = `${dir}.next-${process.pid}`;
    rmSync(next, { recursive: true, force: true });
    mkdirSync(next, { recursive: true });
    for (const f of [engine, ...parts]) writeFileSync(join(next, f.file), f.data);
    writeFileSync(join(next, RUNTIME_LIST), JSON.stringify(list, null, 2) + '\n');
    rmSync(dir, { recursive: true, force: true });
    try {
      renameSync(next, dir);
    } catch (e) {
      // another build swapped its folder in meanwhile: the same sources give the same files
      if (!['ENOTEMPTY', 'EEXIST'].includes((e as NodeJS.ErrnoException).code ?? '')) throw e;
      rmSync(next, { recursive: true, force: true });
    }
    return { dir, list, files: readdirSync(dir) };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

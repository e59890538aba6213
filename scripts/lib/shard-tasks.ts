import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parseLlama2cCheckpoint, randomCheckpoint, type RandomCheckpointOptions } from '../../src/model/checkpoint.js';
import { sha256Hex } from '../../src/model/manifest.js';
import { parseGgufKernels, resolveQuant, sameQuant, type QuantSpec } from '../../src/model/quant.js';
import { defaultQuant } from '../../src/engine/memory-budget.js';
import { GRAPH_REVISION } from '../../src/shards/layer-graphs.js';
import {
  buildGgufShards,
  buildShards,
  type BuiltShards,
  type GgufShardSource,
  type ShardSource,
} from '../../src/shards/build-shards.js';
import { parseGgufModel } from '../../src/model/gguf-model.js';
import { readGgufHeader } from './gguf-file.js';
import { readBytes } from './node-env.js';
import { locateServedGguf, SERVED_MODEL_NAME, servedShardsDir, sha256File } from './served-model.js';

/** The weight format a GGUF's shards have: the file's own blocks. */
export const GGUF_QUANT: QuantSpec = { format: 'gguf', kernel: 'dequant' };

export async function sourceFromGguf(path: string, name: string, sha256?: string): Promise<GgufShardSource> {
  const model = parseGgufModel(await readGgufHeader(path), path);
  return { name, model, source: { file: basename(path), sha256: sha256 ?? (await sha256File(path)) } };
}

type AnySource = ShardSource | GgufShardSource;
const isGguf = (s: AnySource): s is GgufShardSource => 'model' in s;

export interface CheckpointInput {
  checkpoint: string;
  tokenizer: string;
  name: string;
}

export async function sourceFromCheckpoint(input: CheckpointInput): Promise<ShardSource> {
  const bytes = readBytes(input.checkpoint);
  return {
    name: input.name,
    checkpoint: parseLlama2cCheckpoint(bytes, input.checkpoint),
    tokenizerBytes: readBytes(input.tokenizer),
    synthetic: false,
    source: { file: basename(input.checkpoint), sha256: await sha256Hex(bytes) },
  };
}

/** Seeded random weights of a llama shape: for speed work and engine tests, never for quality. */
export function sourceFromRandom(name: string, opts: RandomCheckpointOptions, tokenizer: string): ShardSource {
  return {
    name,
    checkpoint: randomCheckpoint(opts),
    tokenizerBytes: readBytes(tokenizer),
    synthetic: true,
    source: { file: `random(${JSON.stringify(opts)})`, seed: opts.seed },
  };
}

/** Writes into a temporary folder and renames it, so a half-written model is never picked up. */
export function writeShards(outDir: string, built: BuiltShards): void {
  const tmp = `${outDir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  for (const [file, bytes] of built.files) writeFileSync(join(tmp, file), bytes);
  // graphRevision: which revision of the graph builders made these files (not part of the schema).
  writeFileSync(
    join(tmp, 'manifest.json'),
    `${JSON.stringify({ ...built.manifest, graphRevision: GRAPH_REVISION }, null, 2)}\n`,
  );
  rmSync(outDir, { recursive: true, force: true });
  renameSync(tmp, outDir);
}

/**
 * True when outDir holds shards built from the same source bytes, in the same weight format and
 * kernel, by the current revision of the graph builders.
 */
export function upToDate(outDir: string, source: Pick<AnySource, 'source'>, quant: QuantSpec): boolean {
  const path = join(outDir, 'manifest.json');
  if (!existsSync(path)) return false;
  try {
    const m = JSON.parse(readFileSync(path, 'utf8'));
    const r = m.quant ? resolveQuant(m.quant) : null;
    const same = r !== null && 'spec' in r && sameQuant(r.spec, quant);
    return (
      m.source?.sha256 === source.source.sha256 &&
      m.source?.file === source.source.file &&
      same &&
      m.graphRevision === GRAPH_REVISION
    );
  } catch {
    return false;
  }
}

export async function buildAndWrite(
  outDir: string,
  source: AnySource,
  log?: (line: string) => void,
): Promise<BuiltShards> {
  const onProgress = (done: number, total: number, file: string) => log?.(`[${done}/${total}] ${file}`);
  const built = isGguf(source) ? await buildGgufShards(source, onProgress) : await buildShards(source, onProgress);
  writeShards(outDir, built);
  return built;
}

/** Builds the default model's shards when they are missing or stale (npm start / npm test / scripts). */
export async function ensureDefaultShards(log?: (line: string) => void): Promise<string> {
  const { DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, shardsDir } = await import('./node-env.js');
  const source = await sourceFromCheckpoint({
    checkpoint: join(DEFAULT_MODEL_DIR, 'stories260K.bin'),
    tokenizer: join(DEFAULT_MODEL_DIR, 'tok512.bin'),
    name: DEFAULT_MODEL_NAME,
  });
  // The served default is quantized; docs/QUANTIZATION.md has the measurements behind the choice.
  source.quant = defaultQuant(source.checkpoint.config);
  const out = shardsDir(DEFAULT_MODEL_NAME);
  if (!upToDate(out, source, source.quant)) await buildAndWrite(out, source, log);
  return out;
}

/**
 * Builds the served model's shards (SmolLM2 from its GGUF, located or fetched by served-model.ts)
 * when they are missing or stale: npm start and npm test call this before anything else.
 */
export async function ensureServedShards(log?: (line: string) => void): Promise<string> {
  const gguf = await locateServedGguf();
  const out = servedShardsDir();
  // Parse the file only to rebuild.
  if (upToDate(out, { source: { file: basename(gguf.path), sha256: gguf.sha256 } }, GGUF_QUANT)) return out;
  log?.(`building ${SERVED_MODEL_NAME} shards from ${gguf.path}`);
  await buildAndWrite(out, await sourceFromGguf(gguf.path, SERVED_MODEL_NAME, gguf.sha256), log);
  return out;
}

/**
 * Builds the deployable topology's shards (topology.json: its model, with the kernels of its
 * "build" entry, into its shards_directory) from the served GGUF when they are missing or stale:
 * npm start serves them, npm run deploy uploads them.
 */
export async function ensureTopologyShards(log?: (line: string) => void): Promise<string> {
  const { REPO_ROOT } = await import('./node-env.js');
  const { readSettings } = await import('./topology.js');
  const settings = readSettings(join(REPO_ROOT, 'topology.json'));
  const model = settings.vars.MODEL_NAME;
  const spec = model ? settings.build?.[model] : undefined;
  if (!model || !spec)
    throw new Error(`topology.json: vars.MODEL_NAME and build.<MODEL_NAME> (its kernels) are needed`);
  const kernels = parseGgufKernels(spec);
  if ('error' in kernels) throw new Error(`topology.json build.${model}: ${kernels.error}`);
  const out = join(REPO_ROOT, settings.shards_directory ?? 'model-shards', model);
  const gguf = await locateServedGguf();
  const m = existsSync(join(out, 'manifest.json'))
    ? JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'))
    : null;
  const fresh =
    m?.source?.sha256 === gguf.sha256 &&
    m?.graphRevision === GRAPH_REVISION &&
    String(m?.quant?.kernel).startsWith(spec);
  if (fresh) return out;
  log?.(`building ${out} (${spec}) from ${gguf.path}`);
  const source = await sourceFromGguf(gguf.path, model, gguf.sha256);
  writeShards(
    out,
    await buildGgufShards({ ...source, kernels: kernels.kernels }, (d, t, f) => log?.(`[${d}/${t}] ${f}`)),
  );
  return out;
}

/**
 * The benchmark's models, built once into .bench-cache/models/<id>/ (git-ignored; not under
 * model-shards/, which wrangler serves as static assets with a 25 MiB per-file limit):
 *   shards/            per-layer shards + manifest, what the engine loads
 *   hf/<id>/           the same weights as one ONNX graph in transformers.js's layout
 *                      (config.json, generation_config.json, onnx/model.onnx)
 * stories260K has real weights; the others are llama shapes with seeded random weights, fair for
 * speed (shapes and the schedule decide it) and labelled synthetic everywhere.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  parseLlama2cCheckpoint,
  randomCheckpoint,
  type Checkpoint,
  type RandomCheckpointOptions,
} from '../../src/model/checkpoint.js';
import { buildShards } from '../../src/shards/build-shards.js';
import { GRAPH_REVISION } from '../../src/shards/layer-graphs.js';
import { buildMonolithicGraph, transformersConfig } from './monolithic.js';
import { DEFAULT_MODEL_DIR, readBytes, REPO_ROOT } from '../lib/node-env.js';
import { writeShards } from '../lib/shard-tasks.js';

export interface BenchModelSpec {
  id: string;
  label: string;
  synthetic: boolean;
  /** null = stories260K's real checkpoint */
  random: RandomCheckpointOptions | null;
  /** what the model was trained on (random models: none, the shape's nominal context) */
  trainedContext: number;
  lengths: number[];
  quickLengths: number[];
  reps: number;
  quickReps: number;
}

export const BENCH_MODELS: BenchModelSpec[] = [
  {
    id: 'stories260K',
    label: 'stories260K (real weights; 5 layers, dim 64, 8 heads / 4 KV heads, vocab 512)',
    synthetic: false,
    random: null,
    trainedContext: 512,
    lengths: [128, 256, 512, 1024, 2048],
    quickLengths: [128, 512],
    reps: 7,
    quickReps: 5,
  },
  {
    id: 'rand-15M',
    label: 'stories15M shape, SEEDED RANDOM weights (6 layers, dim 288, 6 heads, hidden 768, vocab 32000)',
    synthetic: true,
    random: { dim: 288, hiddenDim: 768, nLayers: 6, nHeads: 6, nKvHeads: 6, vocabSize: 32000, seqLen: 2048, seed: 15 },
    trainedContext: 256,
    lengths: [128, 256, 512, 1024, 2048],
    quickLengths: [512],
    reps: 5,
    quickReps: 3,
  },
  {
    id: 'rand-12x768',
    label: '12 layers, dim 768, 12 heads, hidden 2048, vocab 32000, SEEDED RANDOM weights',
    synthetic: true,
    random: {
      dim: 768,
      hiddenDim: 2048,
      nLayers: 12,
      nHeads: 12,
      nKvHeads: 12,
      vocabSize: 32000,
      seqLen: 2048,
      seed: 768,
    },
    trainedContext: 2048,
    lengths: [512, 1024, 2048],
    quickLengths: [],
    reps: 3,
    quickReps: 2,
  },
];

export interface BenchModelPaths {
  shards: string;
  hfRoot: string;
  hfName: string;
}

export function benchPaths(spec: BenchModelSpec): BenchModelPaths {
  const root = join(REPO_ROOT, '.bench-cache', 'models', spec.id);
  return { shards: join(root, 'shards'), hfRoot: join(root, 'hf'), hfName: spec.id };
}

const TOK512 = () => join(DEFAULT_MODEL_DIR, 'tok512.bin');
const STORIES = () => join(DEFAULT_MODEL_DIR, 'stories260K.bin');

/**
 * tok512 with filler pieces appended up to `vocabSize`, so that a 32000-token random model gets
 * a tokenizer the loader accepts. Prompts only use the first 512 ids.
 */
export function paddedTokenizer(tok: Uint8Array, vocabSize: number): Uint8Array {
  const view = new DataView(tok.buffer, tok.byteOffset, tok.byteLength);
  let off = 4;
  let count = 0;
  while (off < tok.length) {
    off += 8 + view.getInt32(off + 4, true);
    count++;
  }
  if (vocabSize <= count) return tok;
  const enc = new TextEncoder();
  const extra: Uint8Array[] = [];
  for (let id = count; id < vocabSize; id++) {
    const piece = enc.encode(`<x${id}>`);
    const rec = new Uint8Array(8 + piece.length);
    new DataView(rec.buffer).setFloat32(0, -1e6, true);
    new DataView(rec.buffer).setInt32(4, piece.length, true);
    rec.set(piece, 8);
    extra.push(rec);
  }
  const out = new Uint8Array(tok.length + extra.reduce((s, r) => s + r.length, 0));
  out.set(tok);
  let o = tok.length;
  for (const r of extra) {
    out.set(r, o);
    o += r.length;
  }
  const maxLen = Math.max(view.getInt32(0, true), ...extra.map((r) => r.length - 8));
  new DataView(out.buffer).setInt32(0, maxLen, true);
  return out;
}

function sourceTag(spec: BenchModelSpec): string {
  return `${spec.random ? `random(${JSON.stringify(spec.random)})` : 'stories260K.bin'} graphs r${GRAPH_REVISION}`;
}

export function loadBenchCheckpoint(spec: BenchModelSpec): Checkpoint {
  return spec.random ? randomCheckpoint(spec.random) : parseLlama2cCheckpoint(readBytes(STORIES()), STORIES());
}

/** Builds the model's shards and transformers.js export unless they exist for the same source. */
export async function ensureBenchModel(spec: BenchModelSpec, log: (line: string) => void): Promise<BenchModelPaths> {
  const paths = benchPaths(spec);
  const stamp = join(paths.shards, '..', 'source.txt');
  const hfModel = join(paths.hfRoot, paths.hfName, 'onnx', 'model.onnx');
  if (
    existsSync(stamp) &&
    readFileSync(stamp, 'utf8') === sourceTag(spec) &&
    existsSync(hfModel) &&
    existsSync(join(paths.shards, 'manifest.json'))
  ) {
    return paths;
  }
  log(
    `building ${spec.synthetic ? 'SYNTHETIC (seeded random) ' : ''}model ${spec.id} (shards + transformers.js export)`,
  );
  rmSync(join(paths.shards, '..'), { recursive: true, force: true });
  const ck = loadBenchCheckpoint(spec);
  const built = await buildShards({
    name: `bench-${spec.id}`,
    checkpoint: ck,
    tokenizerBytes: paddedTokenizer(readBytes(TOK512()), ck.config.vocabSize),
    synthetic: spec.synthetic,
    source: { file: sourceTag(spec) },
  });
  writeShards(paths.shards, built);
  const hfDir = join(paths.hfRoot, paths.hfName);
  mkdirSync(join(hfDir, 'onnx'), { recursive: true });
  const { config, generationConfig } = transformersConfig(ck);
  writeFileSync(join(hfDir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  writeFileSync(join(hfDir, 'generation_config.json'), `${JSON.stringify(generationConfig, null, 2)}\n`);
  writeFileSync(hfModel, buildMonolithicGraph(ck));
  writeFileSync(stamp, sourceTag(spec));
  return paths;
}

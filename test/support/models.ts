import { initNodeRuntime } from '../../scripts/lib/node-env.js';
import { loadModel, type LoadedModel } from '../../src/engine/model.js';
import { randomCheckpoint, type Checkpoint, type RandomCheckpointOptions } from '../../src/model/checkpoint.js';
import { buildShards } from '../../src/shards/build-shards.js';
import { loadStories260K, readBytes, TOK512_BIN } from './paths.js';

let defaultModel: Promise<LoadedModel> | null = null;

/**
 * stories260K in f32, sharded in memory: the format the f32 reference forward and llama2.c's samples
 * are exact for. (model-shards/stories260K, what `npm start` serves, is quantized: see
 * docs/QUANTIZATION.md and test/node/quant-engine.test.ts.) One instance per test file.
 */
export function loadDefaultModel(): Promise<LoadedModel> {
  defaultModel ??= loadCheckpointModel(loadStories260K().ck, 'stories260K');
  return defaultModel;
}

/** Shards a checkpoint in memory and loads it: no disk, so tests can use any shape. */
export async function loadCheckpointModel(ck: Checkpoint, name = 'test'): Promise<LoadedModel> {
  const built = await buildShards({
    name,
    checkpoint: ck,
    tokenizerBytes: readBytes(TOK512_BIN),
    synthetic: true,
    source: { file: name },
  });
  initNodeRuntime();
  return loadModel(JSON.stringify(built.manifest), async (f) => built.files.get(f)!);
}

export const SMALL_GQA: RandomCheckpointOptions = {
  dim: 96,
  hiddenDim: 256,
  nLayers: 3,
  nHeads: 6,
  nKvHeads: 2,
  vocabSize: 512,
  seqLen: 256,
  seed: 7,
};

export function randomModel(opts: RandomCheckpointOptions = SMALL_GQA): {
  ck: Checkpoint;
  model: Promise<LoadedModel>;
} {
  const ck = randomCheckpoint(opts);
  return { ck, model: loadCheckpointModel(ck) };
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

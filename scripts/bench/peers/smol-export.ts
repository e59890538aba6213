/**
 * SmolLM2 for transformers.js: our monolithic ONNX export (scripts/bench/monolithic.ts) of the
 * very weights of the GGUF (every tensor dequantized to f32, as the shards compute them), in
 * transformers.js's layout under .bench-cache/models/smollm2/hf/smollm2/:
 *   onnx/model_quantized.onnx  dtype "q8", what its wasm backend loads by default: int8 weights per
 *                              output channel, activations quantized on the fly (MatMulInteger)
 *   onnx/model_q4.onnx         dtype "q4": int4 weights in blocks of 32 (com.microsoft MatMulNBits)
 *   onnx/model.onnx            dtype "fp32": the dequantized weights as they are (the exact weights;
 *                              the test checks the transformers.js runner on it)
 * Both re-quantize the dequantized Q4_1 weights, so they do not compute exactly the file's weights
 * (their tokens are compared, not required to match). Built once per GGUF (sha256 stamp) under
 * `cacheRoot`: the bench keeps it in the ignored .bench-cache/, the tests pass a directory outside
 * the checkout (hundreds of MB that `npm test` must not leave in it).
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Checkpoint, LayerWeights } from '../../../src/model/checkpoint.js';
import { dequantize } from '../../../src/model/ggml-quants.js';
import { parseGgufModel, type GgmlMatrix } from '../../../src/model/gguf-model.js';
import { f32Linear, GRAPH_REVISION } from '../../../src/shards/layer-graphs.js';
import { int4NBitsLinear, int8IntegerLinear } from '../../../src/shards/quant-linear.js';
import { buildMonolithicGraph, transformersConfig } from '../monolithic.js';
import { readGgufHeader } from '../../lib/gguf-file.js';
import { REPO_ROOT } from '../../lib/node-env.js';

export const SMOL_TJS_DTYPES = { fp32: 'model.onnx', q8: 'model_quantized.onnx', q4: 'model_q4.onnx' } as const;
export type SmolTjsDtype = keyof typeof SMOL_TJS_DTYPES;

export interface SmolExport {
  hfRoot: string;
  hfName: string;
}

const f32 = (m: GgmlMatrix) => dequantize(m.type, m.data, m.out * m.inp);

export async function ggufCheckpoint(path: string): Promise<Checkpoint> {
  const m = parseGgufModel(await readGgufHeader(path), path);
  if (m.ropeFreqFactors) throw new Error(`${path}: rope frequency factors are not supported by the monolithic export`);
  const tokenEmbedding = f32(m.embedding);
  const layers: LayerWeights[] = m.layers.map((l) => ({
    ...l,
    wq: f32(l.wq),
    wk: f32(l.wk),
    wv: f32(l.wv),
    wo: f32(l.wo),
    w1: f32(l.w1),
    w2: f32(l.w2),
    w3: f32(l.w3),
  }));
  return {
    config: m.config,
    tokenEmbedding,
    layers,
    rmsFinal: m.rmsFinal,
    wcls: m.tiedHead ? tokenEmbedding : f32(m.head),
    sharedClassifier: m.tiedHead,
  };
}

export async function ensureSmolExport(
  gguf: string,
  sha256: string,
  dtypes: readonly SmolTjsDtype[],
  log: (m: string) => void,
  cacheRoot = join(REPO_ROOT, '.bench-cache'),
): Promise<SmolExport> {
  const hfRoot = join(cacheRoot, 'models', 'smollm2', 'hf');
  const hfName = 'smollm2';
  const dir = join(hfRoot, hfName);
  const stamp = join(dir, 'source.txt');
  const tag = `${sha256} graphs r${GRAPH_REVISION}`;
  const have = existsSync(stamp) && readFileSync(stamp, 'utf8') === tag;
  const missing = dtypes.filter((d) => !have || !existsSync(join(dir, 'onnx', SMOL_TJS_DTYPES[d])));
  if (!missing.length) return { hfRoot, hfName };
  if (!have) rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, 'onnx'), { recursive: true });
  log(`transformers.js export: dequantizing ${gguf}`);
  const ck = await ggufCheckpoint(gguf);
  const { config, generationConfig } = transformersConfig(ck, 1, 2);
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  writeFileSync(join(dir, 'generation_config.json'), `${JSON.stringify(generationConfig, null, 2)}\n`);
  for (const d of missing) {
    log(`transformers.js export: building ${SMOL_TJS_DTYPES[d]}`);
    writeFileSync(
      join(dir, 'onnx', SMOL_TJS_DTYPES[d]),
      buildMonolithicGraph(ck, d === 'fp32' ? f32Linear : d === 'q8' ? int8IntegerLinear : int4NBitsLinear(32)),
    );
  }
  writeFileSync(stamp, tag);
  return { hfRoot, hfName };
}

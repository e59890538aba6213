import type { Checkpoint } from '../model/checkpoint.js';
import { MANIFEST_FORMAT, MANIFEST_VERSION, type FileEntry, type Manifest, sha256Hex } from '../model/manifest.js';
import { resolveQuant, type QuantSpec } from '../model/quant.js';
import { buildEmbedGraph, buildHeadGraph, buildLayerGraph } from './layer-graphs.js';
import { linearFor } from './quant-linear.js';

export interface ShardSource {
  name: string;
  checkpoint: Checkpoint;
  tokenizerBytes: Uint8Array;
  synthetic: boolean;
  source: Manifest['source'];
  /** weight format of every matrix in the layers and the head (the embedding table becomes int8 rows); default f32 */
  quant?: QuantSpec;
}

export interface BuiltShards {
  manifest: Manifest;
  /** file name -> bytes, every file the manifest names */
  files: Map<string, Uint8Array>;
}

/**
 * Base-model chat template: stories260K has no chat tuning, so messages are rendered as plain
 * paragraphs and the assistant continues the text. Documented in the README.
 */
export const PLAIN_CHAT_TEMPLATE: Manifest['chatTemplate'] = {
  system: '{content}\n',
  user: '{content}\n',
  assistant: '{content}\n',
  generationPrompt: '',
};

/** Converts a checkpoint into per-layer shards plus a manifest; pure apart from hashing. */
export async function buildShards(src: ShardSource, onProgress?: (done: number, total: number, what: string) => void): Promise<BuiltShards> {
  const ck = src.checkpoint;
  const cfg = ck.config;
  const quant: QuantSpec = src.quant ?? { format: 'f32', kernel: 'matmul' };
  const checked = resolveQuant(quant);
  if ('error' in checked) throw new RangeError(checked.error);
  const linear = linearFor(quant);
  const files = new Map<string, Uint8Array>();
  const total = cfg.nLayers + 3;
  let done = 0;
  const add = async (file: string, bytes: Uint8Array): Promise<FileEntry> => {
    files.set(file, bytes);
    onProgress?.(++done, total, file);
    return { file, bytes: bytes.byteLength, sha256: await sha256Hex(bytes) };
  };
  const tokenizer = await add('tokenizer.bin', src.tokenizerBytes);
  // Quantized formats also store the embedding table as int8 rows (with a large vocabulary it is a
  // big share of the weights); f32 keeps it f32.
  const embed = await add('embed.onnx', buildEmbedGraph(cfg, ck.tokenEmbedding, quant.format !== 'f32'));
  const layers: FileEntry[] = [];
  for (let l = 0; l < cfg.nLayers; l++) {
    layers.push(await add(`layer_${String(l).padStart(2, '0')}.onnx`, buildLayerGraph(cfg, ck.layers[l], l, linear)));
  }
  const head = await add('head.onnx', buildHeadGraph(cfg, ck.rmsFinal, ck.wcls, linear));
  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION,
    name: src.name,
    synthetic: src.synthetic,
    source: src.source,
    quant: { format: quant.format, kernel: quant.kernel, ...(quant.blockSize ? { blockSize: quant.blockSize } : {}) },
    config: { ...cfg },
    tokenizer: { format: 'llama2c', bosId: 1, eosId: 2, ...tokenizer },
    chatTemplate: PLAIN_CHAT_TEMPLATE,
    files: { embed, layers, head },
  };
  return { manifest, files };
}

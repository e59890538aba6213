import type { Checkpoint } from '../model/checkpoint.js';
import { MANIFEST_FORMAT, MANIFEST_VERSION, type FileEntry, type Manifest, sha256Hex } from '../model/manifest.js';
import { buildEmbedGraph, buildHeadGraph, buildLayerGraph, f32Linear, type LinearEmitter } from './layer-graphs.js';

export interface ShardSource {
  name: string;
  checkpoint: Checkpoint;
  tokenizerBytes: Uint8Array;
  synthetic: boolean;
  source: Manifest['source'];
  quant?: { format: string; blockSize?: number; linear: LinearEmitter };
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
  const linear = src.quant?.linear ?? f32Linear;
  const files = new Map<string, Uint8Array>();
  const total = cfg.nLayers + 3;
  let done = 0;
  const add = async (file: string, bytes: Uint8Array): Promise<FileEntry> => {
    files.set(file, bytes);
    onProgress?.(++done, total, file);
    return { file, bytes: bytes.byteLength, sha256: await sha256Hex(bytes) };
  };
  const tokenizer = await add('tokenizer.bin', src.tokenizerBytes);
  const embed = await add('embed.onnx', buildEmbedGraph(cfg, ck.tokenEmbedding));
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
    quant: { format: src.quant?.format ?? 'f32', ...(src.quant?.blockSize ? { blockSize: src.quant.blockSize } : {}) },
    config: { ...cfg },
    tokenizer: { format: 'llama2c', bosId: 1, eosId: 2, ...tokenizer },
    chatTemplate: PLAIN_CHAT_TEMPLATE,
    files: { embed, layers, head },
  };
  return { manifest, files };
}

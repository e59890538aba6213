import { parseManifest, quantOf, verifyFile, type Manifest } from '../model/manifest.js';
import type { ModelConfig } from '../model/config.js';
import type { QuantSpec } from '../model/quant.js';
import { checkShardWeights, embedWeightSpecs, headWeightSpecs, layerWeightSpecs, type WeightSpec } from '../model/shard-check.js';
import { Tokenizer } from '../model/tokenizer.js';
import { createGraphSession, type GraphSession } from '../runtime/onnx-runtime.js';
import { checkMemoryBudget, DEFAULT_MEMORY_BUDGET_BYTES, type MemoryEstimate } from './memory-budget.js';

/** A model ready to run: its sessions are created once and shared by every sequence. */
export interface LoadedModel {
  manifest: Manifest;
  config: ModelConfig;
  /** weight format and kernel, defaults filled in */
  quant: QuantSpec;
  /** what the model needs at its full context (src/engine/memory-budget.ts) */
  memory: MemoryEstimate;
  tokenizer: Tokenizer;
  embed: GraphSession;
  layers: GraphSession[];
  head: GraphSession;
}

/** Reads one file named by the manifest (from disk in Node, from bundled modules in the Worker). */
export type ShardReader = (file: string) => Promise<Uint8Array>;

export interface LoadOptions {
  /** check every file's sha256 against the manifest, and the weight tensors against its format (default true) */
  verify?: boolean;
  /**
   * Refuse, before reading any shard, a model whose weights plus KV and Aux caches at full context
   * would not fit (default 128 MB, a Worker isolate; Infinity turns the check off).
   */
  memoryBudgetBytes?: number;
  /**
   * Fold `dequant` kernels' DequantizeLinear into f32 initializers when sessions are created
   * (default true). false keeps them in the graph, dequantizing on every run: only for measuring.
   */
  foldDequantize?: boolean;
}

export async function loadModel(manifestText: string, read: ShardReader, opts: LoadOptions = {}): Promise<LoadedModel> {
  const manifest = parseManifest(manifestText);
  const quant = quantOf(manifest);
  const memory = checkMemoryBudget(manifest.name, manifest.config, quant, opts.memoryBudgetBytes ?? DEFAULT_MEMORY_BUDGET_BYTES);
  const sessionOpts = { foldDequantize: quant.kernel === 'dequant' && (opts.foldDequantize ?? true) };
  const verify = opts.verify ?? true;
  const fetchFile = async (entry: Manifest['files']['embed']) => {
    const bytes = await read(entry.file);
    if (verify) await verifyFile(entry, bytes);
    return bytes;
  };
  const tokBytes = await fetchFile(manifest.tokenizer);
  const tokenizer = Tokenizer.fromLlama2c(tokBytes, manifest.config.vocabSize, manifest.tokenizer.file);
  const fetchWeights = async (entry: Manifest['files']['embed'], weights: WeightSpec[]) => {
    const bytes = await fetchFile(entry);
    if (verify) checkShardWeights(entry.file, bytes, quant, weights);
    return bytes;
  };
  const embed = await createGraphSession('embed', await fetchWeights(manifest.files.embed, embedWeightSpecs(manifest.config)));
  const layers: GraphSession[] = [];
  const layerWeights = layerWeightSpecs(manifest.config);
  for (const [l, entry] of manifest.files.layers.entries()) {
    layers.push(await createGraphSession(`layer ${l}`, await fetchWeights(entry, layerWeights), sessionOpts));
  }
  const head = await createGraphSession('head', await fetchWeights(manifest.files.head, headWeightSpecs(manifest.config)), sessionOpts);
  return { manifest, config: manifest.config, quant, memory, tokenizer, embed, layers, head };
}

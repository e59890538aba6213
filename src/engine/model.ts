import { ModelFormatError } from '../model/errors.js';
import { parseManifest, quantOf, verifyFile, type FileEntry, type Manifest, type PartEntry } from '../model/manifest.js';
import { EngineError } from './errors.js';
import type { ModelConfig } from '../model/config.js';
import type { QuantSpec } from '../model/quant.js';
import { checkShardWeights, embedWeightSpecs, headWeightSpecs, layerWeightSpecs, type WeightSpec } from '../model/shard-check.js';
import { BpeTokenizer } from '../model/bpe-tokenizer.js';
import type { TextTokenizer } from '../model/text-tokenizer.js';
import { Tokenizer } from '../model/tokenizer.js';
import { createGraphSession, type GraphSession } from '../runtime/onnx-runtime.js';
import { checkMemoryBudget, DEFAULT_MEMORY_BUDGET_BYTES, type MemoryEstimate } from './memory-budget.js';
import type { RowPart } from './vocab-parts.js';

/** A model ready to run: its sessions are created once and shared by every sequence. */
export interface LoadedModel {
  manifest: Manifest;
  /** the manifest's config with `seqLen` = the served context window (at most the trained one, manifest.config.seqLen) */
  config: ModelConfig;
  /** weight format and kernel, defaults filled in */
  quant: QuantSpec;
  /** what the model needs at its served context (src/engine/memory-budget.ts) */
  memory: MemoryEstimate;
  /** the budget it was checked against (bytes; Infinity when off) */
  memoryBudgetBytes: number;
  tokenizer: TextTokenizer;
  /** embedding table by vocabulary rows, in order */
  embed: RowPart[];
  layers: GraphSession[];
  /** classifier by vocabulary rows, in order */
  head: RowPart[];
}

/** Served context window when none is configured: long prompts, and a KV cache a local machine holds. */
export const DEFAULT_CONTEXT_TOKENS = 2048;

/** Reads one file named by the manifest (from disk in Node, from bundled modules in the Worker). */
export type ShardReader = (file: string) => Promise<Uint8Array>;

export interface LoadOptions {
  /** check every file's sha256 against the manifest, and the weight tensors against its format (default true) */
  verify?: boolean;
  /**
   * Refuse, before reading any shard, a model whose weights plus KV and Aux caches at the served context
   * would not fit (default 128 MB, a Worker isolate; Infinity turns the check off).
   */
  memoryBudgetBytes?: number;
  /**
   * Fold `dequant` kernels' DequantizeLinear into f32 initializers when sessions are created
   * (default true). false keeps them in the graph, dequantizing on every run: only for measuring.
   */
  foldDequantize?: boolean;
  /**
   * The context window to serve (default 2048), capped by the trained one: requests must fit it, and
   * the memory budget is checked for a KV cache of this many tokens.
   */
  contextTokens?: number;
}

function tokenizerOf(manifest: Manifest, bytes: Uint8Array): TextTokenizer {
  const t = manifest.tokenizer;
  if (t.format === 'llama2c') return Tokenizer.fromLlama2c(bytes, manifest.config.vocabSize, t.file, { bosId: t.bosId, eosId: t.eosId });
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new ModelFormatError(t.file, 'a tokenizer.json', `unparseable JSON (${(e as Error).message})`);
  }
  return BpeTokenizer.fromJson(json as object, { bosId: t.bosId, eosId: t.eosId, addBos: t.addBos, endIds: t.endIds }, t.file);
}

export async function loadModel(manifestText: string, read: ShardReader, opts: LoadOptions = {}): Promise<LoadedModel> {
  const manifest = parseManifest(manifestText);
  const quant = quantOf(manifest);
  const requested = opts.contextTokens ?? DEFAULT_CONTEXT_TOKENS;
  if (!Number.isSafeInteger(requested) || requested < 2) throw new EngineError(`context window ${requested} must be an integer of at least 2 tokens`, 'invalid_request', 'contextTokens');
  const config = { ...manifest.config, seqLen: Math.min(manifest.config.seqLen, requested) };
  const memoryBudgetBytes = opts.memoryBudgetBytes ?? DEFAULT_MEMORY_BUDGET_BYTES;
  const memory = checkMemoryBudget(manifest.name, config, quant, memoryBudgetBytes);
  const sessionOpts = { foldDequantize: quant.kernel === 'dequant' && (opts.foldDequantize ?? true) };
  const verify = opts.verify ?? true;
  const fetchFile = async (entry: FileEntry) => {
    const bytes = await read(entry.file);
    if (verify) await verifyFile(entry, bytes);
    return bytes;
  };
  const tokBytes = await fetchFile(manifest.tokenizer);
  const tokenizer = tokenizerOf(manifest, tokBytes);
  const fetchWeights = async (entry: FileEntry, weights: WeightSpec[]) => {
    const bytes = await fetchFile(entry);
    if (verify) checkShardWeights(entry.file, bytes, quant, weights);
    return bytes;
  };
  const rowParts = async (what: string, parts: PartEntry[], specs: (rows: number) => WeightSpec[]): Promise<RowPart[]> => {
    const out: RowPart[] = [];
    let start = 0;
    for (const [i, p] of parts.entries()) {
      const name = parts.length === 1 ? what : `${what} ${i}`;
      out.push({ session: await createGraphSession(name, await fetchWeights(p, specs(p.rows)), sessionOpts), start, rows: p.rows });
      start += p.rows;
    }
    return out;
  };
  const embed = await rowParts('embed', manifest.files.embed, (rows) => embedWeightSpecs(manifest.config, rows));
  const layers: GraphSession[] = [];
  const layerWeights = layerWeightSpecs(manifest.config);
  for (const [l, entry] of manifest.files.layers.entries()) {
    layers.push(await createGraphSession(`layer ${l}`, await fetchWeights(entry, layerWeights), sessionOpts));
  }
  const head = await rowParts('head', manifest.files.head, (rows) => headWeightSpecs(manifest.config, rows));
  return { manifest, config, quant, memory, memoryBudgetBytes, tokenizer, embed, layers, head };
}

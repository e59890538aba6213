import { ModelFormatError } from '../model/errors.js';
import { parseManifest, quantOf, verifyFile, type FileEntry, type Manifest } from '../model/manifest.js';
import { EngineError } from './errors.js';
import type { ModelConfig } from '../model/config.js';
import type { QuantSpec } from '../model/quant.js';
import {
  checkShardWeights,
  embedWeightSpecs,
  headWeightSpecs,
  layerWeightSpecs,
  type WeightSpec,
} from '../model/shard-check.js';
import { BpeTokenizer } from '../model/bpe-tokenizer.js';
import type { TextTokenizer } from '../model/text-tokenizer.js';
import { Tokenizer } from '../model/tokenizer.js';
import { graphOps } from '../model/graph-ops.js';
import {
  chooseProvider,
  createGraphSession,
  RuntimeError,
  unsupportedOps,
  type GraphSession,
  type ProviderChoice,
  type ProviderSetting,
} from '../runtime/onnx-runtime.js';
import { checkMemoryBudget, DEFAULT_MEMORY_BUDGET_BYTES, type MemoryEstimate } from './memory-budget.js';
import { checkPartBudget, type LayerRange, type PartSpec } from './memory-budget.js';
import type { RowPart } from './vocab-parts.js';
import { EmbeddingTable } from '../model/embedding-table.js';
import type { KvFormat } from './kv-rows.js';

export type { LayerRange, PartSpec } from './memory-budget.js';

/**
 * Some of a model's pieces, ready to run: a contiguous range of decoder layers, and maybe the
 * embedding, classifier parts and tokenizer. A split model runs its layer groups as parts, each in
 * its own isolate (src/engine/layer-group.ts); the whole model is the part that holds everything.
 */
export interface ModelPart {
  manifest: Manifest;
  /** the manifest's config with `seqLen` = the served context window (at most the trained one, manifest.config.seqLen) */
  config: ModelConfig;
  /** weight format and kernel, defaults filled in */
  quant: QuantSpec;
  /** what the model needs at its served context (src/engine/memory-budget.ts) */
  memory: MemoryEstimate;
  /** the budget it was checked against (bytes; Infinity when off) */
  memoryBudgetBytes: number;
  /** what this part holds */
  part: PartSpec;
  /** the decoder layers held: layers[k] is layer layerRange.start + k */
  layerRange: LayerRange;
  tokenizer: TextTokenizer | null;
  /** the embedding table, looked up without the runtime; null when not held */
  embed: EmbeddingTable | null;
  layers: GraphSession[];
  /** classifier by vocabulary rows, in order (those of `part.head`); empty when not held */
  head: RowPart[];
  /** where every graph of this part runs, and why (one provider for the whole part) */
  runtime: ProviderChoice;
}

/** A model ready to run: its sessions are created once and shared by every sequence. */
export interface LoadedModel extends ModelPart {
  tokenizer: TextTokenizer;
  embed: EmbeddingTable;
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
  /** how the KV cache holds its rows (default f32; src/engine/kv-rows.ts): part of the memory budget */
  kvFormat?: KvFormat;
  /**
   * The execution provider (default wasm): `webgpu` refuses a model it cannot run whole (a RuntimeError
   * saying why), `auto` then falls back to wasm (src/runtime/onnx-runtime.ts chooseProvider).
   */
  provider?: ProviderSetting;
}

function tokenizerOf(manifest: Manifest, bytes: Uint8Array): TextTokenizer {
  const t = manifest.tokenizer;
  if (t.format === 'llama2c')
    return Tokenizer.fromLlama2c(bytes, manifest.config.vocabSize, t.file, { bosId: t.bosId, eosId: t.eosId });
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new ModelFormatError(t.file, 'a tokenizer.json', `unparseable JSON (${(e as Error).message})`);
  }
  return BpeTokenizer.fromJson(
    json as object,
    { bosId: t.bosId, eosId: t.eosId, addBos: t.addBos, endIds: t.endIds },
    t.file,
  );
}

export async function loadModel(manifestText: string, read: ShardReader, opts: LoadOptions = {}): Promise<LoadedModel> {
  const m = await loadModelPart(manifestText, read, {}, opts);
  return m as LoadedModel; // everything held, the tokenizer and embedding too
}

/** Every piece of the model: all layers, the embedding, every classifier part and the tokenizer. */
export function wholePart(manifest: Manifest): PartSpec {
  return {
    layers: { start: 0, end: manifest.config.nLayers },
    embed: true,
    head: manifest.files.head.map((_, i) => i),
    tokenizer: true,
  };
}

/**
 * Loads some of a model: only the shards of the pieces asked for are read and checked. The memory
 * budget is checked for those pieces (src/engine/memory-budget.ts); for the whole model, as loadModel does.
 */
export async function loadModelPart(
  manifestText: string,
  read: ShardReader,
  want: Partial<PartSpec>,
  opts: LoadOptions = {},
): Promise<ModelPart> {
  const manifest = parseManifest(manifestText);
  const whole = wholePart(manifest);
  const part: PartSpec = { ...whole, ...want };
  const L = manifest.config.nLayers;
  const { start, end } = part.layers;
  if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start <= end && end <= L)) {
    throw new EngineError(
      `layer range ${start}..${end} is not within the model's ${L} layers`,
      'invalid_request',
      'layers',
    );
  }
  for (const i of part.head)
    if (!(Number.isInteger(i) && i >= 0 && i < manifest.files.head.length))
      throw new EngineError(
        `classifier part ${i} does not exist (the model has ${manifest.files.head.length})`,
        'invalid_request',
        'head',
      );
  const isWhole = start === 0 && end === L && part.embed && part.head.length === whole.head.length && part.tokenizer;
  const quant = quantOf(manifest);
  const requested = opts.contextTokens ?? DEFAULT_CONTEXT_TOKENS;
  if (!Number.isSafeInteger(requested) || requested < 2)
    throw new EngineError(
      `context window ${requested} must be an integer of at least 2 tokens`,
      'invalid_request',
      'contextTokens',
    );
  const config: ModelConfig = {
    ...manifest.config,
    seqLen: Math.min(manifest.config.seqLen, requested),
    kvFormat: opts.kvFormat ?? 'f32',
  };
  const memoryBudgetBytes = opts.memoryBudgetBytes ?? DEFAULT_MEMORY_BUDGET_BYTES;
  const memory = isWhole
    ? checkMemoryBudget(
        manifest.name,
        config,
        quant,
        memoryBudgetBytes,
        manifest.files.head.map((p) => p.rows),
      )
    : checkPartBudget(
        manifest.name,
        config,
        quant,
        part,
        manifest.files.head.map((p) => p.rows),
        memoryBudgetBytes,
      );
  const verify = opts.verify ?? true;
  // Files read early to choose the provider, handed over when their turn comes (read once).
  const early = new Map<string, Uint8Array>();
  const fetchFile = async (entry: FileEntry) => {
    const ahead = early.get(entry.file);
    early.delete(entry.file);
    const bytes = ahead ?? (await read(entry.file));
    if (verify && !ahead) await verifyFile(entry, bytes);
    return bytes;
  };
  // One provider for the whole part, chosen from its graphs' ops before any session exists: every layer
  // graph has the same ops, and so has every classifier part, so the first of each stands for all.
  const setting = opts.provider ?? 'wasm';
  const samples: { name: string; entry: FileEntry }[] = [];
  if (start < end) samples.push({ name: `layer ${start}`, entry: manifest.files.layers[start] });
  if (part.head.length) samples.push({ name: `head ${part.head[0]}`, entry: manifest.files.head[part.head[0]] });
  const sampled: { name: string; ops: string[] }[] = [];
  if (setting !== 'wasm')
    for (const { name, entry } of samples) {
      const bytes = await fetchFile(entry);
      early.set(entry.file, bytes);
      sampled.push({ name, ops: graphOps(entry.file, bytes) });
    }
  const runtime = await chooseProvider(setting, sampled);
  const sessionOpts = {
    foldDequantize: quant.kernel === 'dequant' && (opts.foldDequantize ?? true),
    provider: runtime.provider,
  };
  /** a session on the chosen provider; a graph unlike its sample would be split across providers: refused */
  const session = (name: string, file: string, bytes: Uint8Array) => {
    const missing = unsupportedOps(runtime.provider, runtime.provider === 'wasm' ? [] : graphOps(file, bytes));
    if (missing.length)
      throw new RuntimeError(`graph "${name}" uses ${missing.join(', ')}, which ${runtime.provider} does not run`);
    return createGraphSession(name, bytes, sessionOpts);
  };
  const tokenizer = part.tokenizer ? tokenizerOf(manifest, await fetchFile(manifest.tokenizer)) : null;
  const fetchWeights = async (entry: FileEntry, weights: WeightSpec[]) => {
    const bytes = await fetchFile(entry);
    if (verify) checkShardWeights(entry.file, bytes, quant, weights);
    return bytes;
  };
  /** the classifier parts numbered in part.head (in order), each knowing its first vocabulary row */
  const headParts = async (): Promise<RowPart[]> => {
    const out: RowPart[] = [];
    let first = 0;
    for (const [i, p] of manifest.files.head.entries()) {
      const name = manifest.files.head.length === 1 ? 'head' : `head ${i}`;
      if (part.head.includes(i))
        out.push({
          session: await session(name, p.file, await fetchWeights(p, headWeightSpecs(manifest.config, p.rows))),
          start: first,
          rows: p.rows,
        });
      first += p.rows;
    }
    return out;
  };
  const embed = part.embed
    ? await EmbeddingTable.fromShards(manifest.files.embed, manifest.config.dim, (p) =>
        fetchWeights(p, embedWeightSpecs(manifest.config, p.rows)),
      )
    : null;
  const layers: GraphSession[] = [];
  const layerWeights = layerWeightSpecs(manifest.config);
  for (let l = start; l < end; l++) {
    const entry = manifest.files.layers[l];
    layers.push(await session(`layer ${l}`, entry.file, await fetchWeights(entry, layerWeights)));
  }
  const head = await headParts();
  return {
    manifest,
    config,
    quant,
    memory,
    memoryBudgetBytes,
    part,
    layerRange: { start, end },
    tokenizer,
    embed,
    layers,
    head,
    runtime,
  };
}

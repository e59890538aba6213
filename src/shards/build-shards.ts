import type { Checkpoint } from '../model/checkpoint.js';
import { LLAMA2C_SPECIAL_IDS } from '../model/tokenizer.js';
import type { ModelConfig } from '../model/config.js';
import { endOfGenerationIds, tokenizerJsonFromSpec } from '../model/bpe-tokenizer.js';
import type { GgmlMatrix, GgufModel } from '../model/gguf-model.js';
import {
  MANIFEST_FORMAT,
  MANIFEST_VERSION,
  type FileEntry,
  type Manifest,
  type PartEntry,
  sha256Hex,
} from '../model/manifest.js';
import {
  GGUF_DEQUANT_KERNELS,
  ggufKernelString,
  ggufQuant,
  resolveQuant,
  type GgufKernels,
  type QuantSpec,
} from '../model/quant.js';
import { ggmlEmbedRows, shardRowBytes, sliceRows, stackGgml } from './ggml-linear.js';
import { ggmlLinearFor, kernelRowBytes, q4EmbedRows } from './ggml-kernels.js';
import {
  buildEmbedGraph,
  buildHeadGraph,
  buildLayerGraph,
  embedGraph,
  f32Format,
  type MatrixFormat,
} from './layer-graphs.js';
import { linearFor } from './quant-linear.js';

/** A llama2.c checkpoint (f32 weights) and its tokenizer file. */
export interface ShardSource {
  name: string;
  checkpoint: Checkpoint;
  tokenizerBytes: Uint8Array;
  synthetic: boolean;
  source: Manifest['source'];
  /** weight format of every matrix in the layers and the head (the embedding table becomes int8 rows); default f32 */
  quant?: QuantSpec;
}

/** A GGUF, read into one model description (src/model/gguf-model.ts); weights keep the file's types. */
export interface GgufShardSource {
  name: string;
  model: GgufModel;
  source: Manifest['source'];
  /** the kernel of each group of matrices (src/model/quant.ts); default: everything dequantized at load */
  kernels?: GgufKernels;
  /** split the head into at least this many row parts (bounds what a kernel that decodes its weights per run allocates) */
  headParts?: number;
}

export interface BuiltShards {
  manifest: Manifest;
  /** file name -> bytes, every file the manifest names */
  files: Map<string, Uint8Array>;
}

export type ShardProgress = (done: number, total: number, what: string) => void;

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

/** Each shard stays below the Workers static-asset limit (25 MiB a file), with room for the graph around the weights. */
export const MAX_SHARD_BYTES = 24 * 1024 * 1024;

/** Row ranges [r0, r1) of equal size (the last may be shorter) such that each part's weights fit one shard. */
export function rowParts(rows: number, rowBytes: number, maxBytes = MAX_SHARD_BYTES): Array<[number, number]> {
  const n = Math.max(1, Math.ceil((rows * rowBytes) / maxBytes));
  const per = Math.ceil(rows / n);
  return Array.from({ length: n }, (_, i) => [i * per, Math.min(rows, (i + 1) * per)] as [number, number]).filter(
    ([a, b]) => b > a,
  );
}

/** Collects the files and their manifest entries, reporting progress as each one is added. */
class ShardWriter {
  readonly files = new Map<string, Uint8Array>();
  private done = 0;
  constructor(
    private readonly total: number,
    private readonly onProgress?: ShardProgress,
  ) {}

  async add(file: string, bytes: Uint8Array): Promise<FileEntry> {
    this.files.set(file, bytes);
    this.onProgress?.(++this.done, this.total, file);
    return { file, bytes: bytes.byteLength, sha256: await sha256Hex(bytes) };
  }

  async parts(
    prefix: string,
    ranges: Array<[number, number]>,
    build: (r0: number, r1: number) => Uint8Array,
  ): Promise<PartEntry[]> {
    const out: PartEntry[] = [];
    for (const [i, [r0, r1]] of ranges.entries()) {
      const name = ranges.length === 1 ? `${prefix}.onnx` : `${prefix}_${i}.onnx`;
      out.push({ ...(await this.add(name, build(r0, r1))), rows: r1 - r0 });
    }
    return out;
  }
}

const layerFile = (l: number) => `layer_${String(l).padStart(2, '0')}.onnx`;

/** Converts a llama2.c checkpoint into per-layer shards plus a manifest; pure apart from hashing. */
export async function buildShards(src: ShardSource, onProgress?: ShardProgress): Promise<BuiltShards> {
  const ck = src.checkpoint;
  const cfg = ck.config;
  const quant: QuantSpec = src.quant ?? { format: 'f32', kernel: 'matmul' };
  const checked = resolveQuant(quant);
  if ('error' in checked) throw new RangeError(checked.error);
  if (quant.format === 'gguf')
    throw new RangeError('the gguf weight format needs a GGUF source (npm run shards -- --gguf FILE)');
  const fmt = f32Format(linearFor(quant));
  const dim = cfg.dim;
  const w = new ShardWriter(cfg.nLayers + 3, onProgress);
  const tokenizer = await w.add('tokenizer.bin', src.tokenizerBytes);
  // Quantized formats also store the embedding table as int8 rows (with a large vocabulary it is a
  // big share of the weights); f32 keeps it f32.
  const quantized = quant.format !== 'f32';
  const embedRowBytes = quantized ? dim + 4 : dim * 4;
  const embed = await w.parts('embed', rowParts(cfg.vocabSize, embedRowBytes), (r0, r1) =>
    buildEmbedGraph(cfg, ck.tokenEmbedding.subarray(r0 * dim, r1 * dim), quantized),
  );
  const layers: FileEntry[] = [];
  for (let l = 0; l < cfg.nLayers; l++)
    layers.push(await w.add(layerFile(l), buildLayerGraph(cfg, ck.layers[l], l, fmt)));
  const head = await w.parts('head', rowParts(cfg.vocabSize, embedRowBytes), (r0, r1) =>
    buildHeadGraph(cfg, ck.rmsFinal, ck.wcls.subarray(r0 * dim, r1 * dim), r1 - r0, fmt.linear),
  );
  const manifest = manifestOf(
    src,
    cfg,
    quant,
    { ...tokenizer, format: 'llama2c', ...LLAMA2C_SPECIAL_IDS },
    PLAIN_CHAT_TEMPLATE,
    { embed, layers, head },
  );
  return { manifest, files: w.files };
}

/**
 * Converts a GGUF model into shards. Matrices keep the file's block types where the graph can
 * unpack them exactly (ggml-linear.ts); the tokenizer becomes a Hugging Face tokenizer.json and the
 * chat template is the file's own.
 */
export async function buildGgufShards(src: GgufShardSource, onProgress?: ShardProgress): Promise<BuiltShards> {
  const m = src.model;
  const cfg = m.config;
  const k = src.kernels ?? GGUF_DEQUANT_KERNELS;
  const quant = ggufQuant(k);
  const rowBytes = (w: GgmlMatrix, kernel: GgufKernels[keyof GgufKernels]) =>
    kernel === 'dequant' ? shardRowBytes(w) : kernelRowBytes(w.inp, kernel);
  const embedRanges = rowParts(
    cfg.vocabSize,
    k.embed === 'q8' ? shardRowBytes(m.embedding) : kernelRowBytes(cfg.dim, k.embed),
  );
  const headBytes = rowBytes(m.head, k.head);
  const headRanges = rowParts(
    cfg.vocabSize,
    headBytes,
    Math.min(MAX_SHARD_BYTES, Math.ceil((cfg.vocabSize * headBytes) / Math.max(1, src.headParts ?? 1))),
  );
  const w = new ShardWriter(cfg.nLayers + 1 + embedRanges.length + headRanges.length, onProgress);
  const tok = m.tokenizer;
  const tokenizer = await w.add('tokenizer.json', new TextEncoder().encode(JSON.stringify(tokenizerJsonFromSpec(tok))));
  const embedRows = k.embed === 'q8' ? ggmlEmbedRows : q4EmbedRows;
  const embed = await w.parts('embed', embedRanges, (r0, r1) =>
    embedGraph(cfg.dim, (b, ids) => embedRows(b, ids, sliceRows(m.embedding, r0, r1))),
  );
  // The layer graph names its matrices wqkv, wo (attention) and w13, w2 (FFN): each group gets its kernel.
  const attn = ggmlLinearFor(k.attn);
  const ffn = ggmlLinearFor(k.ffn);
  const layerFormat: MatrixFormat<GgmlMatrix> = {
    linear: (b, x, name, mat, out, inp) => (name === 'wqkv' || name === 'wo' ? attn : ffn)(b, x, name, mat, out, inp),
    stack: stackGgml,
  };
  const layers: FileEntry[] = [];
  for (let l = 0; l < cfg.nLayers; l++)
    layers.push(
      await w.add(layerFile(l), buildLayerGraph<GgmlMatrix>(cfg, m.layers[l], l, layerFormat, m.ropeFreqFactors)),
    );
  const headLinear = ggmlLinearFor(k.head);
  const head = await w.parts('head', headRanges, (r0, r1) =>
    buildHeadGraph(cfg, m.rmsFinal, sliceRows(m.head, r0, r1), r1 - r0, headLinear),
  );
  const chatTemplate: Manifest['chatTemplate'] = m.chatTemplate
    ? {
        format: 'jinja',
        template: m.chatTemplate,
        bosToken: tok.tokens[tok.bosId] ?? '',
        eosToken: tok.tokens[tok.eosId] ?? '',
      }
    : PLAIN_CHAT_TEMPLATE;
  const tokenizerEntry: Manifest['tokenizer'] = {
    ...tokenizer,
    format: 'hf-bpe',
    bosId: tok.bosId,
    eosId: tok.eosId,
    addBos: tok.addBos,
    endIds: endOfGenerationIds(tok),
  };
  const manifest = manifestOf(
    { name: src.name, synthetic: false, source: src.source },
    cfg,
    quant,
    tokenizerEntry,
    chatTemplate,
    { embed, layers, head },
  );
  return { manifest, files: w.files };
}

function manifestOf(
  src: { name: string; synthetic: boolean; source: Manifest['source'] },
  cfg: ModelConfig,
  quant: QuantSpec,
  tokenizer: Manifest['tokenizer'],
  chatTemplate: Manifest['chatTemplate'],
  files: Manifest['files'],
): Manifest {
  return {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION,
    name: src.name,
    synthetic: src.synthetic,
    source: src.source,
    quant: {
      format: quant.format,
      kernel: quant.gguf ? ggufKernelString(quant.gguf) : quant.kernel,
      ...(quant.blockSize ? { blockSize: quant.blockSize } : {}),
    },
    config: { ...cfg },
    tokenizer,
    chatTemplate,
    files,
  };
}

/**
 * Will a model fit the isolate? A Worker isolate has 128 MB (DESIGN.md), and onnxruntime's wasm
 * heap never shrinks, so a model that fits only until its KV cache grows fails late, mid-request,
 * with an opaque out-of-memory. loadModel checks this estimate up front instead.
 * Pure arithmetic over the config and the weight format; docs/QUANTIZATION.md compares it with
 * measured heaps.
 */
import type { ModelConfig } from '../model/config.js';
import { ggufMatrixBytes, ggufWeightBytes, keepsQuantizedWeights, quantLabel, type QuantSpec } from '../model/quant.js';
import { EngineError } from './errors.js';
import { kvRowBytes } from './kv-rows.js';

export const MB = 1024 * 1024;
/** Cloudflare Workers: 128 MB per isolate. */
export const DEFAULT_MEMORY_BUDGET_BYTES = 128 * MB;
/**
 * JS engine objects every part needs (stories260K in Node: 2.5 MiB of JS heap after loading, net of the
 * wasm binary's copy, which an isolate does not hold).
 */
export const JS_ENGINE_BYTES = 4 * MB;
/**
 * What the runtime costs before any weight: onnxruntime's initial wasm memory (16 MiB) and the JS engine's
 * objects. A part that holds no session (the tokenizer and embedding alone) never starts onnxruntime.
 */
export const RUNTIME_OVERHEAD_BYTES = 16 * MB + JS_ENGINE_BYTES;

/**
 * The measured constants. Commands (docs/MEMORY.md has the runs and the tables):
 *   npm run memory -- --model model-shards/<build> --context 2048,4096,8192 --kv F --json   (whole models)
 *   node --expose-gc --import tsx scripts/memory/split-memory.ts --context 2048 --split 8+2 --json  (one object each, dequant)
 * onnxruntime's wasm memory grows by at least a fifth at a time (emscripten's geometric step 0.2,
 * capped at 96 MiB) and never shrinks, so a measured size is up to 20% above what was live at its
 * peak; the constants are fitted to the measured sizes, which is what an isolate really reserves.
 */
export const MEASURED = {
  /**
   * Creating a piece's session (a layer, an embedding or classifier row part) needs, for a moment,
   * copies of it: the shard's bytes copied into wasm, parsed, then folded (dequant) or prepacked. The
   * wasm memory keeps that high-water mark, so a model holds its tensors plus this many bytes per byte of
   * its largest piece, by the piece's kernel (the freed copies are reused, not added up: the load traces
   * of `npm run memory` show a layer costing its tensors, 2.9 MB against 3.40 for integer2).
   *   dequant layer (Q4_1 unpack chain folded to f32): 10.1 (split-memory, 4 folded layers: 206.8 MB of wasm);
   *   dequant head part (Q8_0 folded): 4.75 (split-memory, one 24576-row part: 341.6 MB of wasm);
   *   integer/integer2 (MatMulInteger, DynamicQuantizeMatMul): 4.8 (integer2 build: 240.7 MB of wasm for
   *   159.7 MB of tensors, its largest pieces the 13.6 MB head parts; the integer build: 240.7 MB too);
   *   nbits family and the q8 embedding: 3.0 (nbits build: 200.6 MB for 138.4 MB, largest piece 15.2 MB).
   * A llama2.c checkpoint's builds, from quant-bench's random-768 rows (docs/QUANTIZATION.md; 28.3 MB of f32 a layer):
   *   f32 MatMul (prepacked): 6.1 (529 MB of wasm); int8 DequantizeLinear folded: 5.6 (515 MB); int4 unpacked and
   *   folded: 12.7 (716 MB); their MatMulInteger and MatMulNBits rows (2.7, 3.2) are within the GGUF kernels' figures.
   */
  copiesPerPieceByte: {
    'dequant-layer': 10.1,
    'dequant-head': 4.75,
    integer: 4.8,
    integer2: 4.8,
    row: 4.8, // the same tensors and consumer as integer2 (not measured apart)
    row2: 4.8,
    rowx: 4.8,
    nbits: 3.0,
    'nbits-zp': 3.0,
    nbits8: 3.0,
    matmul: 6.1,
    'dequant-int8': 5.6,
    'dequant-int4': 12.7,
  } as Record<string, number>,
  /**
   * per token of context: one layer's KV-sized attention temporaries while it runs (past rows decoded to
   * f32, concatenated with the new rows, transposed to the heads' layout), in f32 rows of kvDim: 6, fitted
   * to the nbits build's step from 251.6 to 288.9 MB of wasm between 4096 and 8192 tokens (37.3 MB; 6 rows
   * of 192 f32 at 8192 tokens are 36 MB).
   */
  attnTempRowsPerToken: 6,
  /** the tokenizer's JS heap per vocabulary entry (SmolLM2: 16.3 MB for 49152 entries, measured alone) */
  tokenizerBytesPerVocab: Math.round((16.3 * MB) / 49152),
};

/** Kernels that decode their weight to f32 on every run: the classifier part's rows then exist once more as f32. */
const DECODES_TO_F32 = new Set(['nbits', 'nbits-zp', 'nbits8']);

export interface MemoryEstimate {
  /** every weight as held while the model runs (f32 unless the kernel keeps them quantized) */
  weights: number;
  /** the copies made while creating the largest piece's session, kept by the wasm memory (MEASURED.copiesPerPieceByte) */
  weightCopies: number;
  /** K and V for every layer at seqLen tokens, in the config's kvFormat: nLayers * 2 * seqLen * kvRowBytes */
  kvCache: number;
  /** one hidden state per token at most: seqLen * dim * 4 */
  auxCache: number;
  /**
   * temporaries while running: the classifier part decoded to f32 by a MatMulNBits head, and one
   * layer's KV-sized attention temporaries at seqLen (MEASURED). Prefill activations are bounded by
   * chunking (step.ts prefillChunks) and lie within the runtime's base.
   */
  activations: number;
  /** the tokenizer's tables on the JS heap (0 for a part that does not hold it) */
  tokenizer: number;
  runtime: number;
  /**
   * What must fit the budget: weights, caches, tokenizer and runtime, plus the larger of weightCopies
   * and activations: both live in the wasm memory at different times (loading, running), and the
   * memory freed by one is reused by the other.
   */
  total: number;
}

/** The total of an estimate's parts (see MemoryEstimate.total). */
export function totalOf(e: Omit<MemoryEstimate, 'total'>): number {
  return e.weights + Math.max(e.weightCopies, e.activations) + e.kvCache + e.auxCache + e.tokenizer + e.runtime;
}

/** Bytes of one [out, in] weight matrix as the kernel holds it while running. */
export function matrixBytes(out: number, inp: number, q: QuantSpec): number {
  // A GGUF build's groups differ (estimateMemory sizes each); a lone matrix here is the classifier (estimatePartMemory).
  if (q.gguf) return ggufMatrixBytes(out, inp, q.gguf.head);
  if (!keepsQuantizedWeights(q.kernel)) return out * inp * 4;
  if (q.format === 'int8') return out * inp + out * 4; // int8 values + one f32 scale per output channel
  const bs = q.blockSize!;
  const blocks = out * Math.ceil(inp / bs);
  return blocks * (bs / 2 + 4); // two nibbles per byte (the last block padded) + one f32 scale per block
}

/** The embedding table: f32; int8 rows + a scale per row; a GGUF's Q8_0 rows + a scale per block of 32. */
function embeddingBytes(vocab: number, dim: number, q: QuantSpec): number {
  if (q.format === 'f32') return vocab * dim * 4;
  if (q.format === 'gguf') return vocab * dim + vocab * Math.ceil(dim / 32) * 4;
  return vocab * (dim + 4);
}

/** The kernel that runs each group of matrices. */
function kernelsOf(q: QuantSpec): { attn: string; ffn: string; head: string } {
  if (q.gguf) return { attn: q.gguf.attn, ffn: q.gguf.ffn, head: q.gguf.head };
  // a checkpoint's build: one kernel for every matrix; its dequantize-at-load folds int8 or int4 blocks
  const k = keepsQuantizedWeights(q.kernel) ? q.kernel : q.format === 'f32' ? 'matmul' : `dequant-${q.format}`;
  return { attn: k, ffn: k, head: k };
}

/** Copies per byte of a piece run by `kernel`; a GGUF's dequant folds Q4_1 layers and a Q8_0 head, which differ. */
const factor = (kernel: string, piece: 'layer' | 'head') =>
  MEASURED.copiesPerPieceByte[kernel === 'dequant' ? `dequant-${piece}` : kernel] ?? MEASURED.copiesPerPieceByte.matmul;

/**
 * The pieces a model (or a part of it) is made of, as held while running: one decoder layer's
 * tensors, the embedding, one classifier row, the final norm; the copies each piece's session
 * creation leaves behind per byte; the per-token figures. estimatePartMemory sums them for a part.
 */
export function pieceBytes(cfg: ModelConfig, q: QuantSpec) {
  const { dim, hiddenDim, kvDim, vocabSize } = cfg;
  const k = kernelsOf(q);
  let attn: number, ffn: number, embed: number, headRow: number;
  if (q.gguf) {
    const g = ggufWeightBytes(cfg, q.gguf);
    attn = g.attn;
    ffn = g.ffn;
    embed = g.embed;
    headRow = ggufMatrixBytes(1, dim, q.gguf.head);
  } else {
    attn = matrixBytes(dim + 2 * kvDim, dim, q) + matrixBytes(dim, dim, q); // wq|wk|wv stacked, wo
    ffn = matrixBytes(2 * hiddenDim, dim, q) + matrixBytes(dim, hiddenDim, q); // w1|w3 stacked, w2
    embed = embeddingBytes(vocabSize, dim, q);
    headRow = matrixBytes(1, dim, q); // the classifier: its own copy even when tied
  }
  const norms = 2 * dim * 4; // a layer's RMSNorm gains
  // A layer is one session: its copies are those of its costlier group.
  const layerCopies = Math.round(Math.max(factor(k.attn, 'layer'), factor(k.ffn, 'layer')) * (attn + ffn));
  return {
    layer: attn + ffn + norms,
    /** what creating one layer's session leaves in the wasm memory beyond the tensors */
    layerCopies,
    embed,
    headRow,
    headRowCopies: factor(k.head, 'head') * headRow,
    /** bytes of f32 a MatMulNBits head decodes one row to, on every run */
    headRowDecoded: DECODES_TO_F32.has(k.head) ? dim * 4 : 0,
    finalNorm: dim * 4,
    kvPerTokenLayer: 2 * kvRowBytes(cfg.kvFormat ?? 'f32', kvDim),
    auxPerToken: dim * 4,
    attnTempPerToken: Math.round(MEASURED.attnTempRowsPerToken * kvDim * 4),
    tokenizer: vocabSize * MEASURED.tokenizerBytesPerVocab,
  };
}

/** Which pieces an estimate is for: n decoder layers, the embedding, classifier parts of these rows, the tokenizer. */
export interface HeldPieces {
  layers: number;
  embed: boolean;
  headRows: readonly number[];
  tokenizer: boolean;
}

/**
 * What a model (or a part of it) holding `held` needs at its served context, cfg.seqLen. The copies
 * are those of its largest session; the embedding, looked up in plain code (src/model/embedding-table.ts),
 * makes none.
 */
export function estimateHeld(cfg: ModelConfig, q: QuantSpec, held: HeldPieces): MemoryEstimate {
  const p = pieceBytes(cfg, q);
  const nl = held.layers;
  const rows = held.headRows.reduce((s, r) => s + r, 0);
  const largestHeadPart = Math.max(0, ...held.headRows);
  const e = {
    weights: nl * p.layer + (held.embed ? p.embed : 0) + (rows ? rows * p.headRow + p.finalNorm : 0),
    weightCopies: Math.round(Math.max(nl > 0 ? p.layerCopies : 0, largestHeadPart * p.headRowCopies)),
    kvCache: nl * cfg.seqLen * p.kvPerTokenLayer,
    // A token's Aux Cache entry is in one part, but any part may end up with all of them.
    auxCache: nl > 0 ? cfg.seqLen * p.auxPerToken : 0,
    activations: largestHeadPart * p.headRowDecoded + (nl > 0 ? cfg.seqLen * p.attnTempPerToken : 0),
    tokenizer: held.tokenizer ? p.tokenizer : 0,
    runtime: nl > 0 || rows > 0 ? RUNTIME_OVERHEAD_BYTES : JS_ENGINE_BYTES,
  };
  return { ...e, total: totalOf(e) };
}

/**
 * What the whole model needs at its served context. `headRows`: the rows of each classifier part
 * (manifest.files.head); without it, one part of every row.
 */
export function estimateMemory(
  cfg: ModelConfig,
  q: QuantSpec,
  headRows: readonly number[] = [cfg.vocabSize],
): MemoryEstimate {
  return estimateHeld(cfg, q, { layers: cfg.nLayers, embed: true, headRows, tokenizer: true });
}

const mb = (b: number) => `${(b / MB).toFixed(1)} MB`;

/** The estimate's parts, as the refusals name them. */
export function partsText(e: MemoryEstimate, as: { weights?: string; kv?: string } = {}): string {
  return (
    `weights ${mb(e.weights)}${as.weights ? ` as ${as.weights}` : ''}; the kernels' copies of them ${mb(e.weightCopies)}; ` +
    `KV cache ${mb(e.kvCache)}${as.kv ? ` as ${as.kv}` : ''}; Aux Cache ${mb(e.auxCache)}; ` +
    `activations ${mb(e.activations)}; tokenizer ${mb(e.tokenizer)}; runtime ${mb(e.runtime)}; ` +
    'the copies and the activations reuse the same wasm memory, so only the larger counts'
  );
}

function requirePositive(budgetBytes: number): void {
  if (!(budgetBytes > 0))
    throw new EngineError(
      `memory budget ${budgetBytes} must be a positive number of bytes`,
      'invalid_request',
      'memoryBudget',
    );
}

/**
 * Refuses a model that would not fit `budgetBytes` at its full (served) context, `cfg.seqLen`, naming each part of the
 * estimate and what to do about it. Infinity disables the check. headRows: as estimateMemory.
 */
export function checkMemoryBudget(
  name: string,
  cfg: ModelConfig,
  q: QuantSpec,
  budgetBytes: number,
  headRows?: readonly number[],
): MemoryEstimate {
  requirePositive(budgetBytes);
  const e = estimateMemory(cfg, q, headRows);
  if (e.total > budgetBytes) {
    const held = keepsQuantizedWeights(q.kernel) ? q.format : 'f32';
    throw new EngineError(
      `model "${name}" does not fit the memory budget: it needs ${mb(e.total)} at its full context of ${cfg.seqLen} tokens ` +
        `(${partsText(e, { weights: `${quantLabel(q)}, held as ${held}`, kv: cfg.kvFormat ?? 'f32' })}), ` +
        `but the isolate memory budget allows ${mb(budgetBytes)}. ` +
        'Rebuild the shards in a format that keeps weights quantized in memory (for a GGUF: npm run shards -- --gguf FILE --kernel integer2 --head integer2; ' +
        'for a checkpoint: --quant int4 --kernel nbits), hold the KV cache as f16 or int8 (KV_FORMAT, LAZY_EDGE_KV_FORMAT), use a shorter context, ' +
        "split the model across Durable Objects (docs/LAYER-GROUPS.md), or raise the budget (LAZY_EDGE_MEMORY_BUDGET_MB, or loadModel's memoryBudgetBytes).",
      'model_too_large',
      'memoryBudget',
    );
  }
  return e;
}

/**
 * Width from which the weight GEMMs are big enough for MatMulInteger to win. Measured (npm run
 * quant-bench, docs/QUANTIZATION.md): at dim 64 (stories260K) every kernel prefills and decodes at
 * the same speed, within noise; at dim 288 and 768 MatMulInteger prefills 1.4-2x faster than f32.
 */
export const INTEGER_KERNEL_MIN_DIM = 256;

/**
 * The weight format `npm run shards` builds when none is given, by model size (docs/QUANTIZATION.md):
 * - small models (dim < 256): int8 dequantized at load. Nothing is faster there, it is the most
 *   faithful int8 (perplexity -0.02% vs f32 on stories260K, against +0.5% for the integer kernel)
 *   and the shards are 4x smaller; f32 weights in memory cost little at this size.
 * - larger models: int8 kept int8, MatMulInteger: faster prefill than f32, a quarter of the memory.
 * - int4 MatMulNBits only when nothing else fits: slow decode (it dequantizes on every run) and
 *   +19% perplexity on stories260K. When nothing fits at all, the smallest, so that loading says why.
 */
export function defaultQuant(cfg: ModelConfig, budgetBytes = DEFAULT_MEMORY_BUDGET_BYTES): QuantSpec {
  const candidates: QuantSpec[] = [
    ...(cfg.dim < INTEGER_KERNEL_MIN_DIM ? [{ format: 'int8', kernel: 'dequant' } as QuantSpec] : []),
    { format: 'int8', kernel: 'integer' },
    { format: 'int4', kernel: 'nbits', blockSize: 32 },
  ];
  return candidates.find((q) => estimateMemory(cfg, q).total <= budgetBytes) ?? candidates[candidates.length - 1];
}

// ---- Parts of a split model: one part's layers' weights and KV rows, an Aux Cache that may hold
// every token (a token has one entry, in the part that runs the layer it stopped at, so one part
// can hold them all), the runtime, and the embedding or classifier rows it holds; the same pieces
// as the whole-model estimate, so both count the same bytes.

/** Decoder layers [start, end). */
export interface LayerRange {
  start: number;
  end: number;
}

/** Which pieces of a model one part holds. */
export interface PartSpec {
  layers: LayerRange;
  embed: boolean;
  /** indices into manifest.files.head: the classifier's row parts held here */
  head: readonly number[];
  tokenizer: boolean;
}

/**
 * The estimate for `part` of a model whose config (served seqLen) is `cfg`; headRows = rows of each head part.
 * A part with a session pays the runtime; the attention temporaries come with layers, the classifier's with
 * its rows, and the copies with its largest piece (memory-budget.ts estimateHeld).
 */
export function estimatePartMemory(
  cfg: ModelConfig,
  q: QuantSpec,
  part: PartSpec,
  headRows: readonly number[],
): MemoryEstimate {
  return estimateHeld(cfg, q, {
    layers: part.layers.end - part.layers.start,
    embed: part.embed,
    headRows: part.head.map((i) => headRows[i]),
    tokenizer: part.tokenizer,
  });
}

/** Refuses a part that would not fit `budgetBytes` at the served context, naming each part of the estimate. */
export function checkPartBudget(
  name: string,
  cfg: ModelConfig,
  q: QuantSpec,
  part: PartSpec,
  headRows: readonly number[],
  budgetBytes: number,
): MemoryEstimate {
  requirePositive(budgetBytes);
  const e = estimatePartMemory(cfg, q, part, headRows);
  if (e.total > budgetBytes) {
    const { start, end } = part.layers;
    throw new EngineError(
      `layers ${start}..${end - 1}${part.embed ? ' with the embedding' : ''}${part.head.length ? ` with ${part.head.length} classifier part(s)` : ''} of model "${name}" ` +
        `do not fit the memory budget: they need ${mb(e.total)} at a context of ${cfg.seqLen} tokens (${partsText(e)}), ` +
        `but the isolate memory budget allows ${mb(budgetBytes)}. Split the layers into more groups, put the classifier in objects of its own, ` +
        'hold the KV cache as f16 or int8 (KV_FORMAT), or use a shorter context.',
      'model_too_large',
      'memoryBudget',
    );
  }
  return e;
}

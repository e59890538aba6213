/**
 * Weight formats of the shards and the kernels that run them. The format is what is stored (and
 * shipped); the kernel is which ONNX ops consume it, which decides what the weights cost in memory
 * and time. docs/QUANTIZATION.md has the measurements behind the defaults.
 *
 * | format | kernel    | graph                                                       | weights in memory |
 * | f32    | matmul    | MatMul on an f32 initializer                                | f32               |
 * | int8   | dequant   | DequantizeLinear(int8, per-channel scale) -> MatMul; folded  | f32               |
 * |        |           | into an f32 initializer when the session is created         |                   |
 * | int8   | integer   | DynamicQuantizeLinear(x) -> MatMulInteger -> scale           | int8              |
 * | int4   | dequant   | nibble unpack + block scale -> MatMul; folded at creation   | f32               |
 * | int4   | nbits     | com.microsoft MatMulNBits (dequantizes on every run)        | int4              |
 * | gguf   | dequant   | a GGUF's own blocks (Q4_0/Q4_1/Q8_0; other types as f32),    | f32               |
 * |        |           | unpacked by arithmetic folded at creation (ggml-linear.ts)  |                   |
 * | gguf   | per role  | `attn=K,ffn=K,head=H,embed=E` (GgufKernels below): each      | per role          |
 * |        |           | group of matrices with its own kernel                       |                   |
 */
export const QUANT_FORMATS = ['f32', 'int8', 'int4', 'gguf'] as const;
export type QuantFormat = (typeof QUANT_FORMATS)[number];

export const QUANT_KERNELS = ['matmul', 'dequant', 'integer', 'nbits', 'mixed'] as const;
export type QuantKernel = (typeof QUANT_KERNELS)[number];

/** Kernels each format can run with; the first is the one a manifest without `kernel` means. */
export const KERNELS_OF: Record<QuantFormat, readonly QuantKernel[]> = {
  f32: ['matmul'],
  int8: ['dequant', 'integer'],
  int4: ['dequant', 'nbits'],
  gguf: ['dequant', 'nbits', 'integer', 'mixed'],
};

export const DEFAULT_INT4_BLOCK_SIZE = 32;

export interface QuantSpec {
  format: QuantFormat;
  kernel: QuantKernel;
  /** int4 only: inputs per scale */
  blockSize?: number;
  /** gguf only: the kernel of each group of matrices; `kernel` is then their summary (one kernel, or mixed) */
  gguf?: GgufKernels;
}

/**
 * Kernels for a GGUF's matrices (src/shards/ggml-linear.ts), per group:
 * - dequant:  the file's blocks unpacked by arithmetic folded into f32 at session creation (f32 in memory).
 * - nbits:    MatMulNBits 4-bit. Q4_1 exactly: nibbles repacked, block scale d, uint8 zero point 0, and the
 *             block minimum m as a correction m·Σx over each block's inputs (one small f32 MatMul). Other
 *             types are first re-quantized to the same asymmetric 4-bit blocks (min and scale per 32).
 * - nbits-zp: the same 4-bit blocks with a float zero point -m/d instead of the correction.
 * - nbits8:   MatMulNBits 8-bit: Q8_0 exactly (q + 128 with the default zero point 128); others re-quantized to Q8_0.
 * - integer:  int8 per output channel re-quantized from the file's exact values, DynamicQuantizeLinear + MatMulInteger.
 * - integer2: the same int8 weights, the activations as two int8 terms (the second quantizes the first's error).
 * - row:      the same int8 weights, each activation row quantized with its own scale (one term; src/shards/int8-rows.ts).
 * - row2:     row with two terms, stacked in one MatMulInteger.
 * - rowx:     row with the run's 32 largest input channels multiplied in f32 (w2 in row2): faster than row2, less faithful.
 * The embedding is looked up, not multiplied: q8 keeps Q8_0 rows (the file's, or re-quantized), q4 re-quantizes to 4-bit rows.
 */
export const GGUF_MATRIX_KERNELS = [
  'dequant',
  'nbits',
  'nbits-zp',
  'nbits8',
  'integer',
  'integer2',
  'row',
  'row2',
  'rowx',
] as const;
export type GgufMatrixKernel = (typeof GGUF_MATRIX_KERNELS)[number];
export const GGUF_EMBED_KERNELS = ['q8', 'q4'] as const;
export type GgufEmbedKernel = (typeof GGUF_EMBED_KERNELS)[number];

export interface GgufKernels {
  /** wq|wk|wv and wo */
  attn: GgufMatrixKernel;
  /** w1|w3 and w2 */
  ffn: GgufMatrixKernel;
  /** the classifier (tied to the embedding in SmolLM2, but its own copy) */
  head: GgufMatrixKernel;
  embed: GgufEmbedKernel;
}

/** What `kernel: "dequant"` (and a manifest without kernel) means for a GGUF: the build before per-role kernels. */
export const GGUF_DEQUANT_KERNELS: GgufKernels = { attn: 'dequant', ffn: 'dequant', head: 'dequant', embed: 'q8' };

const ROLES = ['attn', 'ffn', 'head', 'embed'] as const;

/** The manifest's kernel string for these kernels: "dequant" for the original build, else attn=..,ffn=..,head=..,embed=... */
export function ggufKernelString(k: GgufKernels): string {
  if (ROLES.every((r) => k[r] === GGUF_DEQUANT_KERNELS[r])) return 'dequant';
  return ROLES.map((r) => `${r}=${k[r]}`).join(',');
}

/** The summary kernel of per-role kernels: what decides folding and the memory figures of the whole model. */
function ggufSummary(k: GgufKernels): QuantKernel {
  const layer = new Set(
    [k.attn, k.ffn].map((x) =>
      x.startsWith('nbits') ? 'nbits' : x.startsWith('integer') || x.startsWith('row') ? 'integer' : x,
    ),
  );
  if (layer.size > 1) return 'mixed';
  return [...layer][0] as QuantKernel;
}

/** Parses a GGUF kernel string: "dequant", or role=kernel items (roles attn, ffn, head, embed; missing ones keep dequant's). */
export function parseGgufKernels(kernel: string | undefined): { kernels: GgufKernels } | { error: string } {
  if (kernel === undefined || kernel === 'dequant') return { kernels: { ...GGUF_DEQUANT_KERNELS } };
  const k: GgufKernels = { ...GGUF_DEQUANT_KERNELS };
  for (const item of kernel.split(',')) {
    const [role, value] = item.split('=');
    if (!(ROLES as readonly string[]).includes(role) || value === undefined) {
      return {
        error: `quant.kernel item "${item}" is not role=kernel with role one of ${ROLES.join(', ')} (or the whole kernel "dequant")`,
      };
    }
    const allowed: readonly string[] = role === 'embed' ? GGUF_EMBED_KERNELS : GGUF_MATRIX_KERNELS;
    if (!allowed.includes(value))
      return { error: `quant.kernel ${role}=${value}: ${role} takes ${allowed.join(', ')}` };
    (k as unknown as Record<string, string>)[role] = value;
  }
  return { kernels: k };
}

/** One QuantSpec for a GGUF build with these kernels. */
export function ggufQuant(k: GgufKernels): QuantSpec {
  return { format: 'gguf', kernel: ggufSummary(k), gguf: { ...k } };
}

/** What a manifest's `quant` record means once defaults are filled in; null plus a reason when it is inconsistent. */
export function resolveQuant(q: {
  format: string;
  kernel?: string;
  blockSize?: number;
}): { spec: QuantSpec } | { error: string } {
  if (!(QUANT_FORMATS as readonly string[]).includes(q.format)) {
    return { error: `quant.format "${q.format}" is not one of ${QUANT_FORMATS.join(', ')}` };
  }
  const format = q.format as QuantFormat;
  if (format === 'gguf') {
    if (q.blockSize !== undefined)
      return { error: "quant.blockSize does not apply to gguf: its blocks are the file's (32)" };
    const r = parseGgufKernels(q.kernel);
    return 'error' in r ? r : { spec: ggufQuant(r.kernels) };
  }
  const kernels = KERNELS_OF[format];
  const kernel = (q.kernel ?? kernels[0]) as QuantKernel;
  if (!kernels.includes(kernel))
    return { error: `quant.kernel "${q.kernel}" cannot run ${format} weights (use ${kernels.join(' or ')})` };
  if (format === 'int4') {
    const bs = q.blockSize;
    if (bs === undefined) return { error: 'quant.blockSize is required for int4' };
    if (!Number.isInteger(bs) || bs < 16 || (bs & (bs - 1)) !== 0)
      return { error: `quant.blockSize ${bs} must be a power of two >= 16` };
    return { spec: { format, kernel, blockSize: bs } };
  }
  if (q.blockSize !== undefined) return { error: `quant.blockSize only applies to int4, not ${format}` };
  return { spec: { format, kernel } };
}

/** A short label: f32, int8/dequant, int4-b32/nbits. */
export function quantLabel(q: QuantSpec): string {
  if (q.format === 'f32') return 'f32';
  if (q.gguf) return `gguf/${ggufKernelString(q.gguf)}`;
  return `${q.format}${q.format === 'int4' ? `-b${q.blockSize}` : ''}/${q.kernel}`;
}

/** True when the weight matrices stay quantized in memory (the kernel reads the quantized bytes on every run). */
export function keepsQuantizedWeights(kernel: QuantKernel): boolean {
  return kernel === 'integer' || kernel === 'nbits' || kernel === 'mixed';
}

/** True when two specs build the same shards (format, kernel of every role, block size). */
export function sameQuant(a: QuantSpec, b: QuantSpec): boolean {
  return quantLabel(a) === quantLabel(b);
}

const BLOCK = 32;

/** Bytes of one [out, in] GGUF matrix as this kernel holds it while running (ggml-linear.ts's tensors). */
export function ggufMatrixBytes(out: number, inp: number, k: GgufMatrixKernel): number {
  const nb = Math.ceil(inp / BLOCK);
  switch (k) {
    case 'dequant':
      return out * inp * 4;
    case 'nbits': //    nibbles + f32 scale per block + f32 minimum per block (the correction's [nb, out]) + zero points
      return out * nb * (BLOCK / 2 + 8) + out * Math.ceil(nb / 2);
    case 'nbits-zp': // nibbles + f32 scale and f32 zero point per block
      return out * nb * (BLOCK / 2 + 8);
    case 'nbits8':
      return out * nb * (BLOCK + 4);
    case 'integer':
      return out * inp + out * 4;
    case 'integer2': // + an int8 zero point per output channel
    case 'row':
    case 'row2':
    case 'rowx':
      return out * inp + out * 5;
  }
}

/** The embedding table as held: Q8_0 rows (int8 + f32 scale per 32) or 4-bit rows (nibbles + f32 scale and minimum per 32). */
export function ggufEmbeddingBytes(vocab: number, dim: number, k: GgufEmbedKernel): number {
  const nb = Math.ceil(dim / BLOCK);
  return k === 'q8' ? vocab * nb * (BLOCK + 4) : vocab * nb * (BLOCK / 2 + 8);
}

/** Weight bytes of a GGUF build as held while running, per part: what the layer split across isolates sizes its groups by. */
export function ggufWeightBytes(
  c: { dim: number; hiddenDim: number; kvDim: number; vocabSize: number },
  k: GgufKernels,
): { perLayer: number; attn: number; ffn: number; embed: number; head: number } {
  const { dim, hiddenDim, kvDim, vocabSize } = c;
  const attn = ggufMatrixBytes(dim + 2 * kvDim, dim, k.attn) + ggufMatrixBytes(dim, dim, k.attn);
  const ffn = ggufMatrixBytes(2 * hiddenDim, dim, k.ffn) + ggufMatrixBytes(dim, hiddenDim, k.ffn);
  return {
    perLayer: attn + ffn + 2 * dim * 4,
    attn,
    ffn,
    embed: ggufEmbeddingBytes(vocabSize, dim, k.embed),
    head: ggufMatrixBytes(vocabSize, dim, k.head) + dim * 4,
  };
}

/** All weight bytes of a GGUF build as held while running: layers, embedding, head (with the final norm). */
export function ggufTotalWeightBytes(
  c: { dim: number; hiddenDim: number; kvDim: number; vocabSize: number; nLayers: number },
  k: GgufKernels,
): number {
  const b = ggufWeightBytes(c, k);
  return c.nLayers * b.perLayer + b.embed + b.head;
}

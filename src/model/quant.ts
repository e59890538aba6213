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
 */
export const QUANT_FORMATS = ['f32', 'int8', 'int4', 'gguf'] as const;
export type QuantFormat = (typeof QUANT_FORMATS)[number];

export const QUANT_KERNELS = ['matmul', 'dequant', 'integer', 'nbits'] as const;
export type QuantKernel = (typeof QUANT_KERNELS)[number];

/** Kernels each format can run with; the first is the one a manifest without `kernel` means. */
export const KERNELS_OF: Record<QuantFormat, readonly QuantKernel[]> = {
  f32: ['matmul'],
  int8: ['dequant', 'integer'],
  int4: ['dequant', 'nbits'],
  gguf: ['dequant'],
};

export const DEFAULT_INT4_BLOCK_SIZE = 32;

export interface QuantSpec {
  format: QuantFormat;
  kernel: QuantKernel;
  /** int4 only: inputs per scale */
  blockSize?: number;
}

/** What a manifest's `quant` record means once defaults are filled in; null plus a reason when it is inconsistent. */
export function resolveQuant(q: { format: string; kernel?: string; blockSize?: number }): { spec: QuantSpec } | { error: string } {
  if (!(QUANT_FORMATS as readonly string[]).includes(q.format)) {
    return { error: `quant.format "${q.format}" is not one of ${QUANT_FORMATS.join(', ')}` };
  }
  const format = q.format as QuantFormat;
  const kernels = KERNELS_OF[format];
  const kernel = (q.kernel ?? kernels[0]) as QuantKernel;
  if (!kernels.includes(kernel)) return { error: `quant.kernel "${q.kernel}" cannot run ${format} weights (use ${kernels.join(' or ')})` };
  if (format === 'int4') {
    const bs = q.blockSize;
    if (bs === undefined) return { error: 'quant.blockSize is required for int4' };
    if (!Number.isInteger(bs) || bs < 16 || (bs & (bs - 1)) !== 0) return { error: `quant.blockSize ${bs} must be a power of two >= 16` };
    return { spec: { format, kernel, blockSize: bs } };
  }
  if (q.blockSize !== undefined) return { error: `quant.blockSize only applies to int4, not ${format}` };
  return { spec: { format, kernel } };
}

/** A short label: f32, int8/dequant, int4-b32/nbits. */
export function quantLabel(q: QuantSpec): string {
  if (q.format === 'f32') return 'f32';
  return `${q.format}${q.format === 'int4' ? `-b${q.blockSize}` : ''}/${q.kernel}`;
}

/** True when the weight matrices stay quantized in memory (the kernel reads the quantized bytes on every run). */
export function keepsQuantizedWeights(kernel: QuantKernel): boolean {
  return kernel === 'integer' || kernel === 'nbits';
}

/**
 * The one place that emits com.microsoft MatMulNBits (the int4 checkpoint kernel in quant-linear.ts and the
 * GGUF block kernels in ggml-kernels.ts call it), so that a later backend (WebGPU) changes one function.
 *
 * onnxruntime-web 1.30's wasm build has no n-bit GEMM of its own: MatMulNBits decodes its weight to f32 on
 * every run and multiplies in f32, at every accuracy_level (level 4, int8 activations per block, gives the
 * same values as level 0 there: docs/PREFILL.md section 5). Float zero points are accepted for 4 bits only.
 */
import type { GraphBuilder } from './onnx-builder.js';

export interface NBitsWeight {
  /** uint8 initializer [N, K / blockSize, blockSize * bits / 8]: element 2i of a block in the low nibble of byte i */
  q: string;
  /** f32 initializer [N * K / blockSize] */
  scales: string;
  /** uint8 packed (bits-wide) or f32 (4 bits only) initializer [N * K / blockSize]; absent: 2^(bits-1) */
  zeroPoints?: string;
}

export interface NBitsShape {
  /** inputs */
  K: number;
  /** outputs */
  N: number;
  bits: 4 | 8;
  blockSize: number;
  /** 0 (default): f32 compute; 4: int8 activations per block where the build has such a kernel (wasm 1.30 does not) */
  accuracyLevel?: 0 | 1 | 2 | 3 | 4;
}

/** x [.., K] @ the decoded weight^T -> [.., N]. */
export function matMulNBits(b: GraphBuilder, x: string, w: NBitsWeight, s: NBitsShape): string {
  const inputs = [x, w.q, w.scales, ...(w.zeroPoints ? [w.zeroPoints] : [])];
  const attrs = {
    K: s.K,
    N: s.N,
    bits: s.bits,
    block_size: s.blockSize,
    ...(s.accuracyLevel ? { accuracy_level: s.accuracyLevel } : {}),
  };
  return b.op('MatMulNBits', inputs, attrs, { domain: 'com.microsoft' });
}

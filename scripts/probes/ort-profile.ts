/**
 * onnxruntime-web's own profiler, for probes: a session created with enableProfiling, whose node events
 * (the wasm build prints the profile's JSON on the console when profiling ends) are caught and summed.
 * Probes only: the engine's runtime is src/runtime/onnx-runtime.ts.
 */
import * as ort from 'onnxruntime-web/wasm';

export interface NodeEvent {
  op: string;
  name: string;
  us: number;
  inputs: number[][];
  outputs: number[][];
}
export interface Profile {
  nodes: NodeEvent[];
  /** microseconds inside OrtRun per run (model_run events) */
  runUs: number[];
}

function shapes(list: unknown): number[][] {
  if (!Array.isArray(list)) return [];
  return list.map((o) => (Object.values(o as Record<string, number[]>)[0] ?? []) as number[]);
}

export async function profiledSession(bytes: Uint8Array, extra: Record<string, unknown> = {}) {
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: ['wasm'],
    graphOptimizationLevel: 'all',
    enableProfiling: true,
    ...extra,
  } as ort.InferenceSession.SessionOptions);
  return {
    session,
    /** ends profiling and returns every event since the session was created */
    end(): Profile {
      const chunks: string[] = [];
      const log = console.log;
      const write = process.stdout.write.bind(process.stdout);
      console.log = (...a: unknown[]) => void chunks.push(a.map(String).join(' '));
      process.stdout.write = ((s: string | Uint8Array) => (
        chunks.push(String(s)),
        true
      )) as typeof process.stdout.write;
      try {
        session.endProfiling();
      } finally {
        console.log = log;
        process.stdout.write = write;
      }
      const text = chunks.join('\n');
      const json = text.slice(text.indexOf('['), text.lastIndexOf(']') + 1);
      const events = JSON.parse(json) as {
        cat: string;
        name: string;
        dur: number;
        args: Record<string, unknown>;
      }[];
      return {
        nodes: events
          .filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time'))
          .map((e) => ({
            op: String(e.args.op_name),
            name: e.name.replace(/_kernel_time$/, ''),
            us: e.dur,
            inputs: shapes(e.args.input_type_shape),
            outputs: shapes(e.args.output_type_shape),
          })),
        runUs: events.filter((e) => e.name === 'model_run').map((e) => e.dur),
      };
    },
  };
}

/** The kind of work a node of a layer graph does (src/shards/layer-graphs.ts). */
export function kindOf(n: NodeEvent): string {
  const rank = (i: number) => n.inputs[i]?.length ?? 0;
  switch (n.op) {
    case 'MatMul':
    case 'FusedMatMul':
      return rank(0) >= 3 || rank(1) >= 3 ? 'attention: QK and PV MatMuls' : 'projections';
    case 'Gemm': // MatMul + the residual Add, fused by onnxruntime
    case 'MatMulInteger':
    case 'DynamicQuantizeLinear':
    case 'DynamicQuantizeMatMul':
    case 'MatMulIntegerToFloat':
    case 'DequantizeLinear':
    case 'MatMulNBits':
      return 'projections';
    case 'Softmax':
      return 'attention: softmax';
    case 'MultiHeadAttention':
    case 'GroupQueryAttention':
      return 'attention: one operator';
    case 'SimplifiedLayerNormalization':
    case 'SkipSimplifiedLayerNormalization':
      return 'norms';
    case 'RotaryEmbedding':
    case 'Cos':
    case 'Sin':
      return 'RoPE';
    case 'Sigmoid':
    case 'QuickGelu': // x * sigmoid(x), fused
      return 'SiLU, residuals';
    case 'Where':
    case 'LessOrEqual':
      return 'attention: mask';
    case 'Concat':
    case 'Transpose':
      return rank(0) >= 3 || n.outputs[0]?.length >= 3 || (n.op === 'Concat' && n.inputs.length >= 2)
        ? 'attention: K/V concat and transposes'
        : 'other';
    case 'Add':
    case 'Mul':
      if ((n.outputs[0]?.length ?? 0) >= 4) return 'attention: scale and mask add';
      if (n.inputs.some((s) => s.length === 1 && s[0] === 32)) return 'RoPE';
      return n.outputs[0]?.length === 2 && (n.outputs[0][1] ?? 0) >= 576 ? 'SiLU, residuals' : 'other';
    case 'Slice':
    case 'ReduceMean':
      return 'attention: signal rows (attn output)';
    case 'Cast':
      return 'past K/V decode (Cast)';
    default:
      return 'other';
  }
}

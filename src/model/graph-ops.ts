/**
 * The ops an ONNX graph uses, read from its bytes before onnxruntime sees it: which execution
 * provider can run a model is decided from them (src/runtime/onnx-runtime.ts chooseProvider).
 */
import onnxProto from 'onnx-proto';
import { ModelFormatError } from './errors.js';

const { onnx } = onnxProto;

/** Every op of the graph as "domain:Op", or "Op" for the default ai.onnx domain; sorted, each once. */
export function graphOps(file: string, bytes: Uint8Array): string[] {
  let model: InstanceType<typeof onnx.ModelProto>;
  try {
    model = onnx.ModelProto.decode(bytes);
  } catch (e) {
    throw new ModelFormatError(file, 'an ONNX model', `undecodable bytes (${(e as Error).message})`);
  }
  const ops = new Set<string>();
  for (const n of model.graph?.node ?? []) {
    const domain = n.domain && n.domain !== 'ai.onnx' ? `${n.domain}:` : '';
    ops.add(`${domain}${n.opType}`);
  }
  return [...ops].sort();
}

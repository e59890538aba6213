/**
 * The runtime's provider seam (src/runtime/onnx-runtime.ts) where only wasm exists (Node, like
 * workerd): `auto` falls back to wasm saying why, `webgpu` is refused with the reason, and the op
 * check sends a graph with int8 integer kernels (MatMulInteger) nowhere but wasm. The WebGPU side
 * runs in Chromium: test/browser/webgpu-engine.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { initNodeRuntime } from '../../scripts/lib/node-env.js';
import { loadModel } from '../../src/engine/model.js';
import { graphOps } from '../../src/model/graph-ops.js';
import { chooseProvider, RuntimeError, unsupportedOps, WEBGPU_OPS } from '../../src/runtime/onnx-runtime.js';
import { buildShards } from '../../src/shards/build-shards.js';
import { loadStories260K, readBytes, TOK512_BIN } from '../support/paths.js';
import type { QuantSpec } from '../../src/model/quant.js';

async function shardsOf(quant: QuantSpec) {
  return buildShards({
    name: 'stories260K',
    checkpoint: loadStories260K().ck,
    tokenizerBytes: readBytes(TOK512_BIN),
    synthetic: false,
    source: { file: 'stories260K' },
    quant,
  });
}

describe('execution provider', () => {
  it('reads a graph its ops: the folded int8 build needs only ops the WebGPU EP runs, the integer build does not', async () => {
    const dequant = await shardsOf({ format: 'int8', kernel: 'dequant' });
    const integer = await shardsOf({ format: 'int8', kernel: 'integer' });
    const layerOps = (b: typeof dequant) => graphOps('layer_00.onnx', b.files.get(b.manifest.files.layers[0].file)!);
    expect(layerOps(dequant)).toContain('com.microsoft:RotaryEmbedding');
    expect(unsupportedOps('webgpu', layerOps(dequant))).toEqual([]);
    expect(unsupportedOps('webgpu', layerOps(integer))).toEqual(['DynamicQuantizeLinear', 'MatMulInteger']);
    expect(unsupportedOps('wasm', layerOps(integer))).toEqual([]);
    expect(WEBGPU_OPS.has('MatMulInteger')).toBe(false);
  });

  it('auto falls back to wasm here with the reason, webgpu is refused, wasm is wasm', async () => {
    initNodeRuntime();
    const graphs = [{ name: 'layer 0', ops: ['MatMul'] }];
    expect(await chooseProvider('wasm', graphs)).toEqual({ provider: 'wasm', reason: 'wasm was asked for' });
    const auto = await chooseProvider('auto', graphs);
    expect(auto.provider).toBe('wasm');
    expect(auto.reason).toMatch(/^auto: this onnxruntime build is wasm-only/);
    await expect(chooseProvider('webgpu', graphs)).rejects.toThrow(RuntimeError);
    await expect(chooseProvider('webgpu', graphs)).rejects.toThrow(/webgpu cannot run this model: .*wasm-only/);
  });

  it('a model loads whole on the provider chosen, and says which', async () => {
    initNodeRuntime();
    const built = await shardsOf({ format: 'int8', kernel: 'integer' });
    const read = async (f: string) => built.files.get(f)!;
    const auto = await loadModel(JSON.stringify(built.manifest), read, { provider: 'auto' });
    expect(auto.runtime.provider).toBe('wasm');
    expect(auto.runtime.reason).toMatch(/^auto: /);
    await expect(loadModel(JSON.stringify(built.manifest), read, { provider: 'webgpu' })).rejects.toThrow(
      /webgpu cannot run this model/,
    );
    const plain = await loadModel(JSON.stringify(built.manifest), read);
    expect(plain.runtime).toEqual({ provider: 'wasm', reason: 'wasm was asked for' });
  });
});

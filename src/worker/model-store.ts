import wasmModule from 'onnxruntime-web/ort-wasm-simd-threaded.wasm';
import { loadModel, type LoadedModel } from '../engine/model.js';
import { ModelFormatError } from '../model/errors.js';
import { initRuntime } from '../runtime/onnx-runtime.js';

initRuntime({ module: wasmModule });

// One load per isolate, shared by concurrent first requests; a failed load is retried next time.
const loads = new Map<string, Promise<LoadedModel>>();

async function readAsset(assets: Fetcher, path: string): Promise<Uint8Array> {
  const res = await assets.fetch(`https://assets.local/${path}`);
  if (!res.ok) throw new ModelFormatError(path, 'a model shard in the static assets', `HTTP ${res.status} (run npm run shards)`);
  return new Uint8Array(await res.arrayBuffer());
}

/** The named model's shards, read from the static assets and verified against the manifest's sha256. */
export function getModel(assets: Fetcher, name: string): Promise<LoadedModel> {
  let p = loads.get(name);
  if (!p) {
    p = (async () => {
      const manifest = new TextDecoder().decode(await readAsset(assets, `${name}/manifest.json`));
      return loadModel(manifest, (file) => readAsset(assets, `${name}/${file}`));
    })();
    p.catch(() => loads.delete(name));
    loads.set(name, p);
  }
  return p;
}

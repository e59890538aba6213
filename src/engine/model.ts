import { parseManifest, verifyFile, type Manifest } from '../model/manifest.js';
import type { ModelConfig } from '../model/config.js';
import { Tokenizer } from '../model/tokenizer.js';
import { createGraphSession, type GraphSession } from '../runtime/onnx-runtime.js';

/** A model ready to run: its sessions are created once and shared by every sequence. */
export interface LoadedModel {
  manifest: Manifest;
  config: ModelConfig;
  tokenizer: Tokenizer;
  embed: GraphSession;
  layers: GraphSession[];
  head: GraphSession;
}

/** Reads one file named by the manifest (from disk in Node, from bundled modules in the Worker). */
export type ShardReader = (file: string) => Promise<Uint8Array>;

export async function loadModel(manifestText: string, read: ShardReader, opts: { verify?: boolean } = {}): Promise<LoadedModel> {
  const manifest = parseManifest(manifestText);
  const verify = opts.verify ?? true;
  const fetchFile = async (entry: Manifest['files']['embed']) => {
    const bytes = await read(entry.file);
    if (verify) await verifyFile(entry, bytes);
    return bytes;
  };
  const tokBytes = await fetchFile(manifest.tokenizer);
  const tokenizer = Tokenizer.fromLlama2c(tokBytes, manifest.config.vocabSize, manifest.tokenizer.file);
  const embed = await createGraphSession('embed', await fetchFile(manifest.files.embed));
  const layers: GraphSession[] = [];
  for (const [l, entry] of manifest.files.layers.entries()) layers.push(await createGraphSession(`layer ${l}`, await fetchFile(entry)));
  const head = await createGraphSession('head', await fetchFile(manifest.files.head));
  return { manifest, config: manifest.config, tokenizer, embed, layers, head };
}

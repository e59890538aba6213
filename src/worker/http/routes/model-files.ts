import { Hono } from 'hono';
import { parseManifest, sha256Hex, type FileEntry, type Manifest } from '../../../model/manifest.js';
import { placeSplit } from '../../../engine/layer-group.js';
import { configOf } from '../../config.js';
import type { Env } from '../../env.js';
import { groupStub } from '../../groups/stub.js';
import type { AppEnv } from '../app-env.js';
import { ApiError } from '../errors.js';

/**
 * GET /v1/model-files/manifest.json and GET /v1/model-files/{sha256}/{file}: the served model's own
 * files, read-only, for a page that runs the engine itself (docs/WEBGPU.md). Only files the served
 * model's manifest names are answered, each under its sha256, so a URL always means the same bytes:
 * cached for a year as immutable; a rebuilt shard has another URL, and a stale hash is a 404 rather
 * than other bytes. The manifest (which names the hashes) is revalidated by its ETag. The page
 * checks every file against the manifest's sha256 before onnxruntime sees it (loadModel's verify).
 *
 * Split across Workers (docs/TOPOLOGY.md), the front's assets hold only its own shards: a file it
 * does not hold is streamed from the group object that holds it (placeSplit, the one placement rule),
 * through the Durable Object binding the front already has, so the page still talks to one origin.
 * A file no object can give is a 503 `model_file_elsewhere` saying so, never another file.
 */

/** The object of the split that holds `file` (placeSplit's placement), or null when none does. */
function holderOf(env: Env, m: Manifest, file: string): number | null {
  const { groups, heads, frontEmbeds } = configOf(env).split;
  if (groups < 2) return null;
  const objects = placeSplit(m.config.nLayers, m.files.head.length, groups, heads, frontEmbeds);
  const layer = m.files.layers.findIndex((e) => e.file === file);
  const head = m.files.head.findIndex((e) => e.file === file);
  const embed = m.files.embed.some((e) => e.file === file);
  const g = objects.findIndex(
    (o) =>
      (layer >= 0 && o.layers.start <= layer && layer < o.layers.end) ||
      (head >= 0 && o.head.includes(head)) ||
      (embed && o.embed),
  );
  return g >= 0 ? g : null;
}

/** The file from the group object holding it: the bytes, or null. */
async function fromGroup(env: Env, m: Manifest, entry: FileEntry): Promise<ReadableStream<Uint8Array> | null> {
  const g = holderOf(env, m, entry.file);
  if (g === null) return null;
  return (await groupStub(env, g, 'model-files').modelFile(
    entry.file,
    entry.sha256,
  )) as ReadableStream<Uint8Array> | null;
}

const IMMUTABLE = 'public, max-age=31536000, immutable';

async function manifestOf(assets: Fetcher, name: string): Promise<{ text: string; manifest: Manifest; etag: string }> {
  const res = await assets.fetch(`https://assets.local/${name}/manifest.json`);
  if (!res.ok) throw new ApiError(503, `model ${name} has no manifest in this Worker's assets`, 'model_unavailable');
  const bytes = new Uint8Array(await res.arrayBuffer());
  const text = new TextDecoder().decode(bytes);
  return { text, manifest: parseManifest(text), etag: `"${await sha256Hex(bytes)}"` };
}

function entriesOf(m: Manifest): FileEntry[] {
  return [m.tokenizer, ...m.files.embed, ...m.files.layers, ...m.files.head];
}

const notModified = (req: Request, etag: string) =>
  (req.headers.get('if-none-match') ?? '')
    .split(',')
    .map((t) => t.trim())
    .includes(etag);

export const modelFiles = new Hono<AppEnv>()
  .get('/manifest.json', async (c) => {
    const { text, etag } = await manifestOf(c.env.ASSETS, configOf(c.env).modelName);
    const headers = { ETag: etag, 'Cache-Control': 'no-cache', 'X-Content-Type-Options': 'nosniff' };
    if (notModified(c.req.raw, etag)) return c.body(null, 304, headers);
    return c.body(text, 200, { ...headers, 'Content-Type': 'application/json' });
  })
  .get('/:sha256/:file', async (c) => {
    const name = configOf(c.env).modelName;
    const { manifest } = await manifestOf(c.env.ASSETS, name);
    const { sha256, file } = c.req.param();
    const entry = entriesOf(manifest).find((e) => e.file === file && e.sha256 === sha256);
    if (!entry)
      throw new ApiError(
        404,
        `model ${name} has no file ${JSON.stringify(file)} with sha256 ${JSON.stringify(sha256)} (its manifest, GET /v1/model-files/manifest.json, lists them)`,
        'unknown_model_file',
      );
    const etag = `"${entry.sha256}"`;
    const headers = { ETag: etag, 'Cache-Control': IMMUTABLE, 'X-Content-Type-Options': 'nosniff' };
    if (notModified(c.req.raw, etag)) return c.body(null, 304, headers);
    const res = await c.env.ASSETS.fetch(`https://assets.local/${name}/${entry.file}`);
    let body: ReadableStream<Uint8Array> | null = res.ok ? res.body : null;
    if (!res.ok) {
      await res.body?.cancel();
      body = await fromGroup(c.env, manifest, entry);
    }
    if (!body)
      throw new ApiError(
        503,
        `${entry.file} of model ${name} is neither among this Worker's assets nor held by a group object of its split (docs/WEBGPU.md)`,
        'model_file_elsewhere',
      );
    return new Response(body, {
      status: 200,
      headers: { ...headers, 'Content-Type': 'application/octet-stream', 'Content-Length': String(entry.bytes) },
    });
  });

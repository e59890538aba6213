/**
 * Inside workerd: GET /v1/model-files, the served model's own files for a page that runs the engine
 * itself. Every file the manifest names comes back with the bytes its sha256 promises (hashed here),
 * cached as immutable under that hash and revalidated by ETag; anything else is refused. A split
 * front streams the files it lacks from the group objects holding them; a file nobody holds is a 503.
 */
import { env } from 'cloudflare:workers';
import { describe, expect, it } from 'vitest';
import { MODEL, withEnv, worker } from '../support/http.js';

interface Entry {
  file: string;
  sha256: string;
  bytes: number;
}

async function sha256(bytes: ArrayBuffer): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return [...d].map((b) => b.toString(16).padStart(2, '0')).join('');
}

async function manifest(): Promise<{ name: string; entries: Entry[] }> {
  const res = await worker('/v1/model-files/manifest.json');
  expect(res.status).toBe(200);
  const m = (await res.json()) as {
    name: string;
    tokenizer: Entry;
    files: Record<'embed' | 'layers' | 'head', Entry[]>;
  };
  return { name: m.name, entries: [m.tokenizer, ...m.files.embed, ...m.files.layers, ...m.files.head] };
}

describe('GET /v1/model-files', () => {
  it('serves the served model’s manifest, revalidated by its ETag', async () => {
    const res = await worker('/v1/model-files/manifest.json');
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-cache');
    const etag = res.headers.get('etag')!;
    const text = await res.text();
    expect(etag).toBe(`"${await sha256(new TextEncoder().encode(text).buffer as ArrayBuffer)}"`);
    const raw = await env.ASSETS.fetch(`https://assets.local/${MODEL}/manifest.json`);
    expect(text).toBe(await raw.text());
    expect(JSON.parse(text).name).toBe(MODEL);
    const again = await worker('/v1/model-files/manifest.json', { headers: { 'If-None-Match': etag } });
    expect(again.status).toBe(304);
    expect(await again.text()).toBe('');
  });

  it('serves every file of the manifest under its sha256, bytes matching it, immutable', async () => {
    const { entries } = await manifest();
    for (const e of entries) {
      const res = await worker(`/v1/model-files/${e.sha256}/${e.file}`);
      expect(res.status, e.file).toBe(200);
      expect(res.headers.get('cache-control')).toBe('public, max-age=31536000, immutable');
      expect(res.headers.get('etag')).toBe(`"${e.sha256}"`);
      const body = await res.arrayBuffer();
      expect(body.byteLength).toBe(e.bytes);
      expect(await sha256(body)).toBe(e.sha256);
    }
    const e = entries[0];
    const cached = await worker(`/v1/model-files/${e.sha256}/${e.file}`, {
      headers: { 'If-None-Match': `"${e.sha256}"` },
    });
    expect(cached.status).toBe(304);
  });

  it('refuses a stale hash, a file the manifest does not name and a path out of the model', async () => {
    const { entries } = await manifest();
    const e = entries[1];
    const other = entries[2];
    for (const path of [
      `/v1/model-files/${other.sha256}/${e.file}`, // another file's hash: a stale URL
      `/v1/model-files/${e.sha256}/wrangler.toml`,
      `/v1/model-files/${e.sha256}/..%2F..%2Fwrangler.toml`,
      `/v1/model-files/${e.sha256}/${e.file}/more`,
    ]) {
      const res = await worker(path);
      expect(res.status, path).toBe(404);
      const body = (await res.json()) as { error: { code: string } };
      expect(body.error.code === 'unknown_model_file' || body.error.code === 'unknown_url', path).toBe(true);
    }
    expect((await worker(`/v1/model-files/${other.sha256}/${e.file}`).then((r) => r.json())) as object).toMatchObject({
      error: { code: 'unknown_model_file' },
    });
    const post = await worker('/v1/model-files/manifest.json', { method: 'POST' });
    expect(post.status).toBe(405);
  });

  it('is behind the API key like the rest of /v1', async () => {
    const res = await withEnv({ API_KEYS: 'k1' }, '/v1/model-files/manifest.json');
    expect(res.status).toBe(401);
    const ok = await withEnv({ API_KEYS: 'k1' }, '/v1/model-files/manifest.json', {
      headers: { Authorization: 'Bearer k1' },
    });
    expect(ok.status).toBe(200);
  });

  it('split: streams the files the front lacks from the group objects that hold them', async () => {
    const { entries } = await manifest();
    const tokenizer = entries[0];
    // a front that holds only the manifest and the tokenizer, as the topology's does without EMBED_IN_FRONT
    const frontAssets = {
      fetch: (url: string) =>
        url.endsWith('/manifest.json') || url.endsWith(`/${tokenizer.file}`)
          ? env.ASSETS.fetch(url)
          : Promise.resolve(new Response('not found', { status: 404 })),
    } as unknown as Fetcher;
    for (const e of entries) {
      const res = await withEnv({ ASSETS: frontAssets, LAYER_GROUPS: '2' }, `/v1/model-files/${e.sha256}/${e.file}`);
      expect(res.status, e.file).toBe(200);
      expect(res.headers.get('cache-control')).toBe('public, max-age=31536000, immutable');
      expect(await sha256(await res.arrayBuffer()), e.file).toBe(e.sha256);
    }
  });

  it('says so when no Worker of its split can give the file', async () => {
    const { entries } = await manifest();
    const layer = entries.find((e) => e.file.startsWith('layer_'))!;
    const frontAssets = {
      fetch: (url: string) =>
        url.endsWith(`/${layer.file}`)
          ? Promise.resolve(new Response('not found', { status: 404 }))
          : env.ASSETS.fetch(url),
    } as unknown as Fetcher;
    const res = await withEnv({ ASSETS: frontAssets }, `/v1/model-files/${layer.sha256}/${layer.file}`);
    expect(res.status).toBe(503);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('model_file_elsewhere');
  });
});

/**
 * The engine on WebGPU in a real browser: Debian's headless Chromium (/usr/bin/chromium, driven by
 * playwright-core; never a downloaded browser) with --enable-unsafe-webgpu, whose adapter here is
 * SwiftShader (Vulkan on the CPU: correct, not fast). The page is a bundle of src/browser/engine.ts
 * (scripts/lib/browser-bundle.ts), served with the shards from 127.0.0.1 by this test, laid out as the
 * Worker's GET /v1/model-files/ serves them (test/workers/model-files.test.ts tests that route).
 *
 * On stories260K and SmolLM2 (the f32 build, short prompt, few tokens) a greedy run on WebGPU must
 * give the tokens and the per-layer work of every step (LazyLLM's pruning decisions) that the same
 * run gives on wasm in Node, dense and lazy, with each token's logprob within float tolerance; the
 * page's own wasm run too. SmolLM2's int8 build (MatMulInteger) is refused for webgpu with the reason.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BROWSER_WASM, bundleForBrowser } from '../../scripts/lib/browser-bundle.js';
import { loadModelFromDir, SHARDS_ROOT } from '../../scripts/lib/node-env.js';
import { ensureTopologyShards } from '../../scripts/lib/shard-tasks.js';
import { generateRecorded } from '../../src/browser/engine.js';
import type { LoadedModel } from '../../src/engine/model.js';
import { parseSchedule } from '../../src/engine/policy.js';
import type { TokenLogprob } from '../../src/engine/logprobs.js';
import type { PageCase } from './page-entry.js';

const CHROMIUM = '/usr/bin/chromium';
export const WEBGPU_CHROMIUM_ARGS = [
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
];

let server: Server;
let base = '';
let browser: Browser | undefined;
let page: Page;
let bundleDir = '';
/** The models the page may load, by the name in its URL; the int8 one is the deployable topology's build. */
const modelDirs: Record<string, string> = {
  stories260K: join(SHARDS_ROOT, 'stories260K'),
  'smollm2-135m-instruct': join(SHARDS_ROOT, 'smollm2-135m-instruct'),
};

/** Serves the bundle under /bundle/ and, under /models/<name>/, only the files a model's manifest names. */
function serve(): Promise<void> {
  server = createServer((req, res) => {
    try {
      route(req.url ?? '/', res);
    } catch (e) {
      // an answer, never a hang: the page then fails with the reason instead of waiting for the test's timeout
      res.writeHead(500);
      res.end(String(e));
    }
  });
  const route = (target: string, res: ServerResponse) => {
    const url = new URL(target, 'http://x');
    const send = (path: string, type: string) => {
      res.writeHead(200, { 'content-type': type });
      res.end(readFileSync(path));
    };
    if (url.pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html' });
      return res.end('<!doctype html><meta charset="utf-8"><script type="module" src="/bundle/page.js"></script>');
    }
    if (url.pathname === '/bundle/page.js') return send(join(bundleDir, 'page.js'), 'text/javascript');
    if (url.pathname === `/bundle/${BROWSER_WASM}`) return send(join(bundleDir, BROWSER_WASM), 'application/wasm');
    // as the Worker's GET /v1/model-files/ lays them out: manifest.json, then <sha256>/<file>
    const m = /^(?:\/tampered)?\/models\/([\w.-]+)\/(?:([0-9a-f]{64})\/)?([\w.-]+)$/.exec(url.pathname);
    if (m && modelDirs[m[1]]) {
      const dir = modelDirs[m[1]];
      const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
      const files = [manifest.tokenizer, ...manifest.files.embed, ...manifest.files.layers, ...manifest.files.head];
      const named = files.some((f: { file: string; sha256: string }) => f.file === m[3] && f.sha256 === m[2]);
      if ((m[3] === 'manifest.json' && !m[2]) || named) {
        const bytes = readFileSync(join(dir, m[3]));
        // /tampered/models/...: one byte of one layer differs from what the manifest promises
        if (url.pathname.startsWith('/tampered/') && m[3] === manifest.files.layers[1].file)
          bytes[bytes.length >> 1] ^= 1;
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        return res.end(bytes);
      }
    }
    res.writeHead(404);
    res.end();
  };
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => {
      base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
      resolve();
    }),
  );
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)`);
  bundleDir = await bundleForBrowser({ page: 'test/browser/page-entry.ts' });
  // npm run test:webgpu runs setup first, so this finds the build made and does not rebuild it
  modelDirs['smollm2-int8'] = await ensureTopologyShards();
  await serve();
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: WEBGPU_CHROMIUM_ARGS });
  page = await browser.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${base}/`);
  await page.waitForFunction(() => 'runCase' in globalThis);
  expect(errors).toEqual([]);
});

afterAll(async () => {
  await browser?.close();
  await new Promise((r) => server?.close(r));
});

type Run = {
  schedule: string;
  tokens: number[];
  logprobs: TokenLogprob[];
  steps: number[][][];
  prefillMs: number;
  decodeMs: number;
};
type PageResult = {
  provider: string;
  reason: string;
  loadMs: number;
  runs: Run[];
  wasmHeap: number | null;
  jsHeap: number | null;
};

function runInPage(c: Omit<PageCase, 'wasmUrl' | 'modelUrl'> & { model: string }): Promise<PageResult> {
  const arg: PageCase = { ...c, modelUrl: `${base}/models/${c.model}/`, wasmUrl: `${base}/bundle/${BROWSER_WASM}` };
  return page.evaluate((a) => (globalThis as unknown as { runCase(a: PageCase): Promise<PageResult> }).runCase(a), arg);
}

async function runInNode(model: LoadedModel, prompt: number[], maxTokens: number, schedules: string[]): Promise<Run[]> {
  const runs: Run[] = [];
  for (const s of schedules) {
    const { result, steps } = await generateRecorded(model, prompt, {
      maxTokens,
      sampler: { temperature: 0, topP: 1, topK: 0, seed: 1 },
      schedule: s === 'dense' ? null : parseSchedule(s),
      logprobs: { top: 5 },
    });
    runs.push({ schedule: s, tokens: result.tokens, logprobs: result.logprobs!, steps, prefillMs: 0, decodeMs: 0 });
  }
  return runs;
}

/** Largest difference between two runs' logprobs, over each step's chosen token and its top 5. */
function maxLogprobDiff(a: TokenLogprob[], b: TokenLogprob[]): number {
  let d = 0;
  a.forEach((x, i) => {
    d = Math.max(d, Math.abs(x.logprob - b[i].logprob));
    x.top.forEach((t, k) => (d = Math.max(d, Math.abs(t.logprob - b[i].top[k].logprob))));
  });
  return d;
}

/** The same tokens, the same positions computed by every layer at every step, logprobs within `tol`. */
function expectAgreement(label: string, got: Run[], want: Run[], tol: number) {
  for (const [i, w] of want.entries()) {
    const g = got[i];
    expect(g.schedule).toBe(w.schedule);
    expect(g.tokens, `${label} ${w.schedule}: tokens`).toEqual(w.tokens);
    expect(g.steps, `${label} ${w.schedule}: per-layer work of every step`).toEqual(w.steps);
    const diff = maxLogprobDiff(g.logprobs, w.logprobs);
    console.log(`${label} ${w.schedule}: max |logprob diff| vs wasm in Node ${diff.toExponential(2)}`);
    expect(diff).toBeLessThan(tol);
  }
}

const mib = (b: number | null) => (b === null ? '?' : (b / 2 ** 20).toFixed(1));

const timing = (label: string, r: PageResult) =>
  console.log(
    `${label}: ${r.provider} (${r.reason}); load ${r.loadMs.toFixed(0)} ms; ` +
      `wasm heap ${mib(r.wasmHeap)} MiB, JS heap ${mib(r.jsHeap)} MiB; ` +
      r.runs
        .map((x) => `${x.schedule} prefill ${x.prefillMs.toFixed(0)} ms, decode ${x.decodeMs.toFixed(0)} ms`)
        .join('; '),
  );

describe('the engine on WebGPU (headless Chromium, SwiftShader)', () => {
  it('stories260K: WebGPU and the page’s wasm give wasm-in-Node’s tokens and pruning decisions', async () => {
    const model = await loadModelFromDir(join(SHARDS_ROOT, 'stories260K'), { memoryBudgetBytes: Infinity });
    const prompt = model.tokenizer.encode(
      'Once upon a time, there was a little cat named Tom who wanted to find his ball.',
      {
        bos: true,
      },
    );
    const schedules = ['dense', 'bos,1:0.5,3:0.5'];
    const want = await runInNode(model, prompt, 24, schedules);
    expect(want[1].steps[0].at(-1)!.length).toBeLessThan(prompt.length); // the schedule prunes this prompt
    const gpu = await runInPage({ model: 'stories260K', provider: 'webgpu', prompt, maxTokens: 24, schedules });
    timing('stories260K webgpu', gpu);
    expect(gpu.provider).toBe('webgpu');
    expectAgreement('stories260K webgpu', gpu.runs, want, 1e-2);
    const cpu = await runInPage({ model: 'stories260K', provider: 'wasm', prompt, maxTokens: 24, schedules });
    timing('stories260K wasm (page)', cpu);
    expect(cpu.provider).toBe('wasm');
    expectAgreement('stories260K wasm (page)', cpu.runs, want, 1e-5);
  });

  it('SmolLM2 (f32 build): WebGPU gives wasm-in-Node’s tokens and pruning decisions', async () => {
    const name = 'smollm2-135m-instruct';
    const model = await loadModelFromDir(join(SHARDS_ROOT, name), { memoryBudgetBytes: Infinity });
    const prompt = model.tokenizer.encode('The capital of France is', { bos: true });
    const schedules = ['dense', 'bos,4:0.5,12:0.5'];
    const want = await runInNode(model, prompt, 3, schedules);
    expect(want[1].steps[0].at(-1)!.length).toBeLessThan(prompt.length);
    const gpu = await runInPage({ model: name, provider: 'webgpu', prompt, maxTokens: 3, schedules });
    timing(`${name} webgpu`, gpu);
    expect(gpu.provider).toBe('webgpu');
    expectAgreement(`${name} webgpu`, gpu.runs, want, 1e-2);
    const cpu = await runInPage({ model: name, provider: 'wasm', prompt, maxTokens: 3, schedules });
    timing(`${name} wasm (page)`, cpu);
    expectAgreement(`${name} wasm (page)`, cpu.runs, want, 1e-5);
  });

  it('shows load progress to the last byte, and refuses a file whose bytes are not the manifest’s', async () => {
    type Loaded = { progress: { file: string; loadedBytes: number; totalBytes: number }[]; error: string | null };
    const load = (prefix: string) =>
      page.evaluate((a) => (globalThis as unknown as { loadOnly(a: object): Promise<Loaded> }).loadOnly(a), {
        modelUrl: `${base}${prefix}/models/stories260K/`,
        wasmUrl: `${base}/bundle/${BROWSER_WASM}`,
        provider: 'webgpu',
      });
    const manifest = JSON.parse(readFileSync(join(SHARDS_ROOT, 'stories260K', 'manifest.json'), 'utf8'));
    const files = [manifest.tokenizer, ...manifest.files.embed, ...manifest.files.layers, ...manifest.files.head];
    const total = files.reduce((n: number, f: { bytes: number }) => n + f.bytes, 0);
    const ok = await load('');
    expect(ok.error).toBeNull();
    expect(ok.progress.map((p) => p.file).sort()).toEqual(files.map((f: { file: string }) => f.file).sort());
    expect(
      ok.progress.every(
        (p, i) => p.totalBytes === total && (i === 0 || p.loadedBytes > ok.progress[i - 1].loadedBytes),
      ),
    ).toBe(true);
    expect(ok.progress.at(-1)!.loadedBytes).toBe(total);
    const bad = await load('/tampered');
    expect(bad.error).toMatch(
      new RegExp(`${manifest.files.layers[1].file}: expected sha256 ${manifest.files.layers[1].sha256}`),
    );
  });

  it('SmolLM2’s int8 build (the deployable topology’s, MatMulInteger) is refused for webgpu, naming the ops', async () => {
    await expect(
      runInPage({ model: 'smollm2-int8', provider: 'webgpu', prompt: [1], maxTokens: 1, schedules: [] }),
    ).rejects.toThrow(/webgpu cannot run this model: graph "layer 0" uses [\w, ]*\bMatMulInteger\b/);
  });
});

/**
 * SPAWNS the local server (scripts/serve.ts, workerd) and Debian's headless Chromium: the playground's
 * "run in this browser" through the real Worker and a real browser. Part of `npm run test:webgpu`
 * (vitest.webgpu.config.ts), not of `npm test`: a WebGPU run on SwiftShader is slow.
 *
 * The Worker serves stories260K (PREFIX_CACHE_MB 0: every server run is a fresh prefill, like the
 * page's). The page served at / downloads its engine bundle and onnxruntime's binary in parts from
 * /playground/, the model from /v1/model-files, and must:
 * - show load progress up to 100% of the manifest's bytes;
 * - give, greedy, the reply the API gives for the same messages and settings (text and token count),
 *   streamed in several pieces, with the API's pruning trace exactly, drawn as the same grid the
 *   page draws for the server path; on wasm, and on WebGPU (SwiftShader) where Chromium has it;
 * - without WebGPU: `auto` runs on wasm and says why; `webgpu` is refused with the reason and the
 *   server path offered, which then answers;
 * - with too little memory (V8's wasm memory capped below onnxruntime's initial heap, the failure
 *   a browser short of memory gives: WebAssembly.Memory's RangeError at session creation): the
 *   model's name, its bytes from the manifest and the engine's estimate, and the server path offered.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildPlaygroundAssets } from '../../scripts/lib/playground-assets.js';
import { ensureDefaultShards } from '../../scripts/lib/shard-tasks.js';
import type { LazyTrace } from '../../src/engine/trace.js';
import { sendAndWatch } from '../support/playground-page.js';
import { exited, killGroup, startWranglerDev, type DevServer } from '../support/wrangler-dev.js';

const CHROMIUM = '/usr/bin/chromium';
const COMMON_ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run'];
/** SwiftShader's WebGPU adapter where no GPU exists */
const WITH_WEBGPU = [...COMMON_ARGS, '--enable-unsafe-webgpu'];
/** no GPU process, hence no WebGPU adapter */
const WITHOUT_WEBGPU = [...COMMON_ARGS, '--disable-gpu'];
/** 200 wasm pages (12.5 MiB): below onnxruntime's initial heap of 16 MiB */
const LITTLE_MEMORY = [...WITHOUT_WEBGPU, '--js-flags=--wasm-max-mem-pages=200'];

const SYSTEM = 'A story about a cat and a dog.';
const USER = 'Once upon a time, there was a little cat named Tom who wanted to find his ball.';
const SCHEDULE = 'bos,1:0.5,3:0.5';
const MAX_TOKENS = 24;

const started: ChildProcess[] = [];
const persist = mkdtempSync(join(tmpdir(), 'lazy-edge-in-browser-'));
const browsers: Browser[] = [];
let server: DevServer;
let manifest: { name: string; tokenizer: { bytes: number }; files: Record<string, { bytes: number }[]> };
const pageErrors: string[] = [];

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)`);
  const dir = await ensureDefaultShards();
  manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  // npm run test:webgpu's setup builds it too; built here so that the test stands alone
  await buildPlaygroundAssets();
  server = await startWranglerDev(
    ['--persist-to', persist, '--var', 'MODEL_NAME:stories260K', '--var', 'PREFIX_CACHE_MB:0'],
    join(persist, 'wrangler.log'),
    started,
  );
});

afterAll(async () => {
  for (const b of browsers) await b.close();
  for (const c of started) killGroup(c, 'SIGKILL');
  await Promise.all(started.map(exited));
  rmSync(persist, { recursive: true, force: true });
});

async function openPage(args: string[]): Promise<Page> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args });
  browsers.push(browser);
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`${server.base}/`);
  await expect.poll(() => page.textContent('#status')).toContain('model stories260K');
  await page.fill('#system', SYSTEM);
  await page.fill('#maxtokens', String(MAX_TOKENS));
  await page.fill('#temperature', '0');
  await page.fill('#seed', '7');
  await page.fill('#schedule', SCHEDULE);
  await page.setChecked('#lazy', true);
  return page;
}

/** Turns "run in this browser" on with `provider`; the load's status texts in order, and its end state. */
async function runInBrowser(page: Page, provider: string): Promise<{ texts: string[]; state: string }> {
  await page.selectOption('#provider', provider);
  await page.evaluate(() => {
    const w = window as unknown as { statusTexts: string[] };
    w.statusTexts = [];
    const el = document.getElementById('loadstatus')!;
    new MutationObserver(() => w.statusTexts.push(el.textContent ?? '')).observe(el, { childList: true });
  });
  await page.setChecked('#inbrowser', true);
  await expect
    .poll(() => page.getAttribute('#loadstatus', 'data-state'), { timeout: 600_000, interval: 250 })
    .toMatch(/^(ready|error)$/);
  return {
    texts: await page.evaluate(() => (window as unknown as { statusTexts: string[] }).statusTexts),
    state: (await page.getAttribute('#loadstatus', 'data-state'))!,
  };
}

interface Sent {
  reply: string;
  lengths: number[];
  stats: string;
  /** the trace the page drew its grid from */
  trace: LazyTrace;
  /** the grid as drawn: one string per layer, a letter per cell (c computed, r revived, p pruned, e earlier) */
  grid: string[];
}

async function send(page: Page, text: string): Promise<Sent> {
  const { reply, text: replyText, lengths } = await sendAndWatch(page, text, 600_000);
  return {
    reply: replyText,
    lengths,
    stats: (await reply.locator('.stats').textContent()) ?? '',
    trace: await reply.evaluate((el) => (el as unknown as { trace: LazyTrace }).trace),
    grid: await page.$$eval('#grid .row.layer', (rows) =>
      rows.map((r) =>
        Array.from(r.querySelectorAll('.c'))
          .map((c) => c.className.replace(/^c /, '')[0])
          .join(''),
      ),
    ),
  };
}

interface Completion {
  choices: { message: { content: string } }[];
  usage: { completion_tokens: number };
  lazy_stats: { trace: LazyTrace; completion_tokens: number; schedule: string };
}

/**
 * The same request straight to the API, non-streamed: what the page's own run must reproduce.
 * `schedule` null: none given, the server's default.
 */
async function fromApi(schedule: string | null = SCHEDULE): Promise<Completion> {
  const res = await fetch(`${server.base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'stories260K',
      messages: [
        { role: 'system', content: SYSTEM },
        { role: 'user', content: USER },
      ],
      max_tokens: MAX_TOKENS,
      temperature: 0,
      seed: 7,
      lazy: { enabled: true, trace: true, ...(schedule === null ? {} : { schedule }) },
    }),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as Completion;
}

const modelBytes = () =>
  manifest.tokenizer.bytes +
  [...manifest.files.embed, ...manifest.files.layers, ...manifest.files.head].reduce((n, f) => n + f.bytes, 0);
const mb = (b: number) => `${(b / 1e6).toFixed(1)} MB`;

/** The reply and the trace equal the API's; the reply streamed; the grid is drawn from that trace. */
function expectSameAsServer(got: Sent, api: Completion, provider: string) {
  expect(got.reply).toBe(api.choices[0].message.content);
  expect(got.reply.length).toBeGreaterThan(20);
  expect(got.stats).toContain(`ran in this browser (${provider})`);
  expect(got.stats).toContain(`${api.usage.completion_tokens} reply tokens`);
  expect(got.trace).toEqual(api.lazy_stats.trace);
  const growing = got.lengths.filter((n) => n > 0);
  expect(growing.length, JSON.stringify(got.lengths)).toBeGreaterThanOrEqual(3);
  for (let k = 1; k < growing.length; k++) expect(growing[k]).toBeGreaterThan(growing[k - 1]);
  const t = api.lazy_stats.trace;
  expect(got.grid).toHaveLength(t.layers);
  expect(got.grid.every((row) => row.length === t.tokens)).toBe(true);
  expect(got.grid.join('')).toMatch(/p/); // the schedule pruned something
}

describe('[spawns the local server and Chromium] the playground runs the model in the browser', () => {
  it('on wasm: progress to 100%, the server’s greedy reply and trace, and the grid the server path draws', async () => {
    const page = await openPage(WITHOUT_WEBGPU);
    const load = await runInBrowser(page, 'wasm');
    expect(load.state).toBe('ready');
    expect(await page.$eval('#loadbar', (e) => (e as HTMLProgressElement).value)).toBe(1);
    const model = load.texts.filter((t) => t.startsWith('model '));
    expect(model.length).toBeGreaterThanOrEqual(3); // one per file
    expect(model.at(-1)).toBe(`model ${mb(modelBytes())} of ${mb(modelBytes())} (100%)`);
    expect(load.texts.some((t) => /^onnxruntime 26\.8 MB of 26\.8 MB$/.test(t))).toBe(true);
    expect(await page.getAttribute('#loadstatus', 'data-provider')).toBe('wasm');
    expect(await page.isHidden('#browsernotice')).toBe(true); // wasm was asked for: nothing to explain

    const api = await fromApi();
    const local = await send(page, USER);
    expectSameAsServer(local, api, 'wasm');

    // The server path in the same page, the same message: the same text and the same grid.
    await page.click('#newchat');
    await page.setChecked('#inbrowser', false);
    const remote = await send(page, USER);
    expect(remote.stats).not.toContain('ran in this browser');
    expect(remote.reply).toBe(local.reply);
    expect(remote.grid).toEqual(local.grid);
    expect(pageErrors).toEqual([]);
  });

  it('on WebGPU (auto, SwiftShader here): the same reply and trace as the server', async () => {
    const page = await openPage(WITH_WEBGPU);
    const load = await runInBrowser(page, 'auto');
    expect(load.state).toBe('ready');
    expect(await page.getAttribute('#loadstatus', 'data-provider')).toBe('webgpu');
    expect(await page.isHidden('#browsernotice')).toBe(true);
    expectSameAsServer(await send(page, USER), await fromApi(), 'webgpu');
    expect(pageErrors).toEqual([]);
  });

  it('without WebGPU: auto runs on wasm and says why; webgpu is refused with the reason and the server offered', async () => {
    const page = await openPage(WITHOUT_WEBGPU);
    expect((await runInBrowser(page, 'auto')).state).toBe('ready');
    expect(await page.getAttribute('#loadstatus', 'data-provider')).toBe('wasm');
    expect(await page.getAttribute('#browsernotice', 'data-kind')).toBe('fallback');
    expect(await page.textContent('#browsernotice .text')).toMatch(
      /^No WebGPU for this model here, so it runs on wasm \(the CPU\): this browser (has no WebGPU|offers no WebGPU adapter)/,
    );
    expect(await page.isHidden('#useserver')).toBe(true);
    // No schedule given: the page plans with the server's default, and gets the server's reply and trace.
    await page.fill('#schedule', '');
    const api = await fromApi(null);
    const local = await send(page, USER);
    expect(local.stats).toContain(`schedule ${api.lazy_stats.schedule} ·`);
    expect(local.reply).toBe(api.choices[0].message.content);
    expect(local.trace).toEqual(api.lazy_stats.trace);

    await page.fill('#schedule', SCHEDULE);
    await page.click('#newchat');
    await page.setChecked('#inbrowser', false);
    expect((await runInBrowser(page, 'webgpu')).state).toBe('error');
    expect(await page.getAttribute('#browsernotice', 'data-kind')).toBe('no-webgpu');
    expect(await page.textContent('#browsernotice .text')).toMatch(
      /^WebGPU was asked for and cannot be used: this browser (has no WebGPU|offers no WebGPU adapter)/,
    );
    await page.click('#useserver');
    expect(await page.isChecked('#inbrowser')).toBe(false);
    const remote = await send(page, USER);
    expect(remote.reply).toBe((await fromApi()).choices[0].message.content);
    expect(remote.stats).not.toContain('ran in this browser');
    expect(pageErrors).toEqual([]);
  });

  it('with too little memory: names the model and its bytes, and offers the server', async () => {
    const page = await openPage(LITTLE_MEMORY);
    expect((await runInBrowser(page, 'wasm')).state).toBe('error');
    expect(await page.getAttribute('#browsernotice', 'data-kind')).toBe('memory');
    const text = (await page.textContent('#browsernotice .text')) ?? '';
    expect(text).toContain(
      `This browser could not give stories260K the memory it needs: its files are ${mb(modelBytes())} (the manifest's sizes)`,
    );
    expect(text).toMatch(/loaded it holds about \d+\.\d MB \(the engine's estimate\)/);
    expect(text).toMatch(/WebAssembly\.Memory\(\): could not allocate memory/);
    expect(await page.isVisible('#useserver')).toBe(true);
    await page.click('#useserver');
    const remote = await send(page, USER);
    expect(remote.reply).toBe((await fromApi()).choices[0].message.content);
    expect(pageErrors).toEqual([]);
  });
});

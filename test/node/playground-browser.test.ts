/**
 * SPAWNS the local server (scripts/serve.ts) and a headless Chromium: the playground page in a real browser.
 *
 * Starts `scripts/serve.ts --ip 127.0.0.1 --port <free> --var MODEL_NAME:stories260K` (its own process
 * group, persisted to a temporary directory), then Debian's /usr/bin/chromium driven by
 * playwright-core (never a downloaded browser; `.ci/run` installs the package when missing). The
 * page loads from the dev server, sends a chat message, and the streamed reply must grow in
 * several steps and end as the same text the API gives for the same request; the pruning grid
 * must have one row per layer of the model and one column per token of the prompt as the chat
 * template renders it, with the prompt's text along it and each layer's computed cells matching
 * the API's prefill statistics. A session chat must survive a reload. The page after the first reply
 * is saved as a PNG in the test's temporary directory, never in docs/ (`npm run screenshot` refreshes
 * docs/playground.png, on the served model), so that the suite leaves the checkout clean. Only 127.0.0.1 is contacted; the
 * browser and the server are stopped whether the test passes or fails.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModelFromDir } from '../../scripts/lib/node-env.js';
import { ensureDefaultShards } from '../../scripts/lib/shard-tasks.js';
import type { LoadedModel } from '../../src/engine/model.js';
import type { LazyTrace } from '../../src/engine/trace.js';
import { encodePrompt } from '../../src/model/text-tokenizer.js';
import { renderChat } from '../../src/model/chat-prompt.js';
import { sendAndWatch } from '../support/playground-page.js';
import { exited, killGroup, startWranglerDev, type DevServer } from '../support/wrangler-dev.js';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
];

const SYSTEM = 'A story about a cat and a dog.';
const USER = 'Once upon a time, there was a little cat named Tom who wanted to find his ball.';
/** prunes even this short prompt (the default schedule's floor of 128 tokens would keep it whole) */
const SCHEDULE = 'bos,1:0.5,3:0.5';
const MAX_TOKENS = 48;
const SEED = 7;

const started: ChildProcess[] = [];
const persist = mkdtempSync(join(tmpdir(), 'lazy-edge-playground-'));
const SCREENSHOT = join(persist, 'playground.png');
let server: DevServer;
let browser: Browser | undefined;
let model: LoadedModel;
/** uncaught errors of the page's script: none may happen */
const pageErrors: string[] = [];

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)`);
  model = await loadModelFromDir(await ensureDefaultShards());
  server = await startWranglerDev(
    ['--persist-to', persist, '--var', 'MODEL_NAME:stories260K'],
    join(persist, 'wrangler.log'),
    started,
  );
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

afterAll(async () => {
  await browser?.close();
  for (const c of started) killGroup(c, 'SIGKILL');
  await Promise.all(started.map(exited));
  rmSync(persist, { recursive: true, force: true });
});

async function openPage(): Promise<Page> {
  const page = await browser!.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`${server.base}/`);
  await expect.poll(() => page.textContent('#status')).toContain('model stories260K');
  return page;
}

async function settings(page: Page, o: { session: boolean }) {
  await page.fill('#system', SYSTEM);
  await page.fill('#maxtokens', String(MAX_TOKENS));
  await page.fill('#temperature', '0');
  await page.fill('#seed', String(SEED));
  await page.fill('#schedule', SCHEDULE);
  await page.setChecked('#lazy', true);
  await page.setChecked('#usesession', o.session);
}

interface Completion {
  choices: { message: { content: string } }[];
  lazy_stats: { prefill_computed_per_layer: number[]; trace: LazyTrace };
}

describe('[spawns the local server and Chromium] the playground page', () => {
  it('streams a reply and draws the pruning grid the model and prompt imply', async () => {
    const page = await openPage();
    await settings(page, { session: false });
    const { lengths, text: reply } = await sendAndWatch(page, USER, 120_000);

    // The same request, non-streamed, straight to the API: the page must show exactly its text. Computed
    // afresh (cache_prompt false), since the page's grid shows a fresh prefill, not one the cache served.
    const messages = [
      { role: 'system' as const, content: SYSTEM },
      { role: 'user' as const, content: USER },
    ];
    const res = await fetch(`${server.base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'stories260K',
        messages,
        max_tokens: MAX_TOKENS,
        temperature: 0,
        seed: SEED,
        lazy: { enabled: true, schedule: SCHEDULE, trace: true },
        cache_prompt: false,
      }),
    });
    expect(res.status).toBe(200);
    const api = (await res.json()) as Completion;
    expect(reply).toBe(api.choices[0].message.content);
    expect(reply.length).toBeGreaterThan(20);

    // It grew while streaming: several lengths, each longer than the last, ending at the whole reply.
    const growing = lengths.filter((n) => n > 0);
    expect(growing.length, JSON.stringify(lengths)).toBeGreaterThanOrEqual(3);
    for (let k = 1; k < growing.length; k++) expect(growing[k]).toBeGreaterThan(growing[k - 1]);
    expect(growing.at(-1)).toBe(reply.length);

    // The grid: layers x prompt tokens, as the model's config and the chat template imply.
    const layers = model.config.nLayers;
    const rendered = renderChat(model.manifest.chatTemplate, messages);
    const tokens = encodePrompt(model.tokenizer, rendered).length;
    const grid = page.locator('#grid');
    expect(await grid.getAttribute('data-layers')).toBe(String(layers));
    expect(await grid.getAttribute('data-tokens')).toBe(String(tokens));
    expect(await page.locator('#grid .row.layer').count()).toBe(layers);
    const perLayer = await page.$$eval('#grid .row.layer', (rows) =>
      rows.map((r) => ({
        cells: r.querySelectorAll('.c').length,
        computed: r.querySelectorAll('.c.computed').length,
        revived: r.querySelectorAll('.c.revived').length,
      })),
    );
    expect(perLayer.map((r) => r.cells)).toEqual(new Array(layers).fill(tokens));
    expect(perLayer.map((r) => r.computed)).toEqual(api.lazy_stats.prefill_computed_per_layer);
    expect(perLayer[0].computed).toBe(tokens); // layer 0 computes every token
    expect(perLayer.some((r) => r.computed < tokens)).toBe(true); // the schedule pruned something
    const revivedCells = api.lazy_stats.trace.revivals.reduce((s, [, , from, to]) => s + to - from, 0);
    expect(perLayer.reduce((s, r) => s + r.revived, 0)).toBe(revivedCells);

    // The prompt's text runs along the grid, one label per token (BOS shows as "·", a newline as "⏎").
    const labels = await page.$$eval('#grid .row.tokens .t', (ts) => ts.map((t) => t.textContent ?? ''));
    expect(labels).toHaveLength(tokens);
    expect(labels.join('').replaceAll('·', '').replaceAll('⏎', '\n')).toBe(rendered);

    // The reply's statistics: TTFT, speed, rows per layer against dense.
    const stats = (await page.locator('.msg.assistant .stats').first().textContent()) ?? '';
    expect(stats).toMatch(/TTFT \d+ ms/);
    expect(stats).toMatch(/tokens\/s/);
    expect(stats).toContain(`schedule ${SCHEDULE}`);

    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    expect(readFileSync(SCREENSHOT).subarray(0, 8)).toEqual(
      Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    ); // a PNG
    expect(pageErrors).toEqual([]);
    await page.close();
  });

  it('keeps a session chat across a page reload', async () => {
    const page = await openPage();
    await page.click('#newchat');
    await settings(page, { session: true });
    const { text: reply } = await sendAndWatch(page, USER, 120_000);
    const id = await page.evaluate(() => localStorage.getItem('lazy-edge.session'));
    expect(id).toMatch(/^sess_[0-9a-f]{32}$/);
    expect(await page.textContent('#sessioninfo')).toContain(id!);

    await page.reload();
    await expect.poll(() => page.locator('.msg').count()).toBe(2);
    expect(await page.locator('.msg.user .text').textContent()).toBe(USER);
    expect(await page.locator('.msg.assistant .text').textContent()).toBe(reply);
    expect(await page.inputValue('#system')).toBe(SYSTEM);

    // The second turn continues the stored session: the server reuses the cached history.
    const second = await sendAndWatch(page, 'Tom looked under the bed.', 120_000);
    expect(second.text.length).toBeGreaterThan(0);
    const grid = page.locator('#grid');
    const stored = (await (await fetch(`${server.base}/v1/sessions/${id}`)).json()) as {
      messages: unknown[];
      stats: { tokens: number };
    };
    expect(stored.messages).toHaveLength(5); // system, user, assistant, user, assistant
    const reusedCells = await page.locator('#grid .c.earlier').count();
    expect(reusedCells).toBeGreaterThan(0); // history computed in the first turn
    expect(Number(await grid.getAttribute('data-tokens'))).toBeLessThan(stored.stats.tokens);
    expect(pageErrors).toEqual([]);
    await page.close();
  });
});

/**
 * npm run screenshot -- [--out docs/playground.png] [--model <name>] [--schedule <schedule>] [--max-tokens 48] [--port <free>] [--in-browser wasm|webgpu|auto [--compare]]
 * Refreshes the README's picture of the playground: serves the Worker locally (scripts/serve.ts on
 * 127.0.0.1, the served model unless --model names another shard folder, state in a temporary
 * directory), opens the page in Debian's headless Chromium (playwright-core, never a downloaded
 * browser), sends one chat message with the lazy schedule on and saves the page once the reply is
 * done. With --in-browser the page runs the model itself ("run in this browser", docs/WEBGPU.md) on
 * that provider (webgpu needs --enable-unsafe-webgpu, added then) and the picture shows its load and
 * reply: `--in-browser wasm --out docs/playground-in-browser.png` makes that picture; `--compare` then
 * sends the message again on the server path and fails unless its reply and pruning trace are the page's.
 * The only script that writes docs/playground.png: the tests save their screenshot in a
 * temporary directory, so that `npm test` leaves the checkout as it found it.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';
import { fail, freeLoopbackPort, progress, REPO_ROOT, runMain } from './lib/node-env.js';
import { SERVED_MODEL_NAME } from './lib/served-model.js';
import { killGroup, spawnServe } from './lib/wrangler-dev.js';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
];
const USAGE = `usage: npm run screenshot -- [--out docs/playground.png] [--model ${SERVED_MODEL_NAME}] [--schedule <schedule>] [--max-tokens 48] [--port <free>] [--in-browser wasm|webgpu|auto [--compare]]
  Serves the Worker on 127.0.0.1, sends one chat message from the playground in headless Chromium
  (${CHROMIUM}) and saves the page with its reply and pruning grid to --out; with --in-browser the
  page runs the model itself on that provider, and with --compare the server path must give its reply.`;
const PROVIDERS = ['wasm', 'webgpu', 'auto'];

/** Until /healthz answers 200; its 5xx (a model that cannot load) is final, not worth waiting out. */
async function healthy(base: string, child: ChildProcess, log: string): Promise<void> {
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`the local server exited; its log:\n${readFileSync(log, 'utf8')}`);
    const res = await fetch(`${base}/healthz`).catch(() => null);
    if (res?.ok) return;
    if (res && res.status >= 500)
      throw new Error(`the server cannot serve the model: ${res.status} ${await res.text()}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

runMain(async () => {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        out: { type: 'string', default: join(REPO_ROOT, 'docs/playground.png') },
        model: { type: 'string', default: SERVED_MODEL_NAME },
        // prunes a short chat prompt (the default schedule's floor of 128 tokens keeps it whole)
        schedule: { type: 'string', default: 'bos,4:0.5,12:0.5' },
        'max-tokens': { type: 'string', default: '48' },
        system: { type: 'string', default: 'You are a helpful assistant.' },
        message: { type: 'string', default: 'Write two sentences about a cat who finds a lost ball.' },
        port: { type: 'string' },
        'in-browser': { type: 'string' },
        // with --in-browser: then the same message on the server path, whose reply and trace must be the page's
        compare: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
    }));
  } catch (e) {
    process.stderr.write(`${USAGE}\n`);
    fail((e as Error).message);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (!existsSync(CHROMIUM)) fail(`${CHROMIUM} is missing: apt-get install -y chromium`);
  const inBrowser = values['in-browser'];
  if (inBrowser !== undefined && !PROVIDERS.includes(inBrowser))
    fail(`--in-browser ${inBrowser}: one of ${PROVIDERS.join(', ')}`);
  const out = resolve(values.out);
  const dir = mkdtempSync(join(tmpdir(), 'lazy-edge-screenshot-'));
  const port = values.port === undefined ? await freeLoopbackPort() : Number(values.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) fail(`--port ${values.port} is not a port number`);
  const base = `http://127.0.0.1:${port}`;
  const log = join(dir, 'wrangler.log');
  // the budget npm start serves with: the served model's f32 shards do not fit the default 128 MB
  const child = spawnServe(
    [
      '--ip',
      '127.0.0.1',
      '--port',
      String(port),
      '--persist-to',
      dir,
      '--var',
      `MODEL_NAME:${values.model}`,
      '--var',
      'MEMORY_BUDGET_MB:1024',
      // every server reply a fresh prefill, as the page's is (the comparison's trace would show a reused prefix)
      ...(values.compare ? ['--var', 'PREFIX_CACHE_MB:0'] : []),
    ],
    log,
  );
  const args = inBrowser && inBrowser !== 'wasm' ? [...CHROMIUM_ARGS, '--enable-unsafe-webgpu'] : CHROMIUM_ARGS;
  const browser = await chromium.launch({ executablePath: CHROMIUM, args }).catch((e) => {
    killGroup(child, 'SIGKILL');
    throw e;
  });
  try {
    progress(`serving ${values.model} on ${base} (log ${log})`);
    await healthy(base, child, log);
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await page.goto(`${base}/`);
    await page.waitForFunction(
      (m) => document.getElementById('status')?.textContent?.includes(`model ${m}`),
      values.model,
      { timeout: 120_000 },
    );
    await page.fill('#system', values.system);
    await page.fill('#maxtokens', values['max-tokens']);
    await page.fill('#temperature', '0');
    await page.fill('#schedule', values.schedule);
    await page.setChecked('#lazy', true);
    await page.setChecked('#usesession', false);
    if (inBrowser) {
      await page.selectOption('#provider', inBrowser);
      await page.setChecked('#inbrowser', true);
      const t0 = performance.now();
      await page.waitForFunction(
        () => /^(ready|error)$/.test(document.getElementById('loadstatus')?.dataset.state ?? ''),
        null,
        { timeout: 600_000 },
      );
      const status = await page.textContent('#loadstatus');
      if ((await page.getAttribute('#loadstatus', 'data-state')) !== 'ready')
        throw new Error(`the page could not load the model: ${await page.textContent('#browsernotice')}`);
      progress(`in the page: ${status} (${((performance.now() - t0) / 1000).toFixed(1)} s from the toggle)`);
    }
    await page.fill('#input', values.message);
    await page.click('#send');
    const reply = page.locator('.msg.assistant').first();
    await page.waitForFunction(
      () => /^(done|error)$/.test(document.querySelector('.msg.assistant')?.getAttribute('data-state') ?? ''),
      null,
      { timeout: 600_000 },
    );
    if ((await reply.getAttribute('data-state')) !== 'done')
      throw new Error(`the reply failed: ${await reply.textContent()}`);
    progress(`reply stats: ${await reply.locator('.stats').textContent()}`);
    await page.screenshot({ path: out, fullPage: true });
    progress(`wrote ${out}`);
    if (values.compare && inBrowser) {
      const seen = async () => ({
        text: await reply.locator('.text').textContent(),
        trace: await reply.evaluate((el) => JSON.stringify((el as unknown as { trace: unknown }).trace)),
      });
      const local = await seen();
      await page.click('#newchat');
      await page.setChecked('#inbrowser', false);
      await page.fill('#input', values.message);
      await page.click('#send');
      await page.waitForFunction(
        () => /^(done|error)$/.test(document.querySelector('.msg.assistant')?.getAttribute('data-state') ?? ''),
        null,
        { timeout: 600_000 },
      );
      progress(`server path: ${await reply.locator('.stats').textContent()}`);
      const remote = await seen();
      if (remote.text !== local.text || remote.trace !== local.trace)
        throw new Error(
          `the server path differs: ${JSON.stringify(remote.text)} vs the page's ${JSON.stringify(local.text)}`,
        );
      progress('the server path gives the same reply and pruning trace');
    }
  } finally {
    await browser.close();
    killGroup(child, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

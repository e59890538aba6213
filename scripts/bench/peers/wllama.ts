/**
 * wllama (llama.cpp compiled to wasm, @wllama/wllama from npm) in Debian's headless Chromium driven
 * by playwright-core, on a cross-origin isolated page served on 127.0.0.1 (wllama-page.ts), loading
 * the same GGUF file. Each row gets its own browser, so that its renderer's peak memory is its own.
 *
 * Timings: the page clock (performance.now() at the call and at every streamed token) is the
 * headline; wllama's own (llama-server's prompt_ms and predicted_ms) are kept beside it. CPU time is
 * that of the browser's processes (/proc), kept as CPU per wall second of each call.
 *
 * wllama takes prompts as text only (its V3 API hands `prompt` to llama-server as a string), so each
 * prompt comes with a text that our tokenizer maps to exactly its ids; the row reports wllama's own
 * prompt token count, which the bench checks against ours.
 */
import { existsSync } from 'node:fs';
import type { Browser, Page } from 'playwright-core';
import { descendants, maxPeakRssMb, treeCpuMs } from '../../lib/proc.js';
import { servePeerPage, type PageServer } from './wllama-page.js';
import { unavailable, type Peer, type PeerStart, type PeerTrial } from './peer.js';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
];

interface Chunk {
  choices?: { logprobs?: { content?: { id: number }[] } | null }[];
  timings?: { prompt_n: number; prompt_ms: number; predicted_n: number; predicted_ms: number; cache_n: number };
  usage?: { prompt_tokens: number };
}

interface PageRun {
  t0: number;
  stamps: number[];
  chunks: Chunk[];
}

interface Loaded {
  fetchMs: number;
  loadMs: number;
  multithread: boolean;
  compat: boolean;
  threads: number;
  libllama: string | null;
  nVocab: number;
}

/** Ids and stamps of the token chunks (the last chunk only carries finish_reason, usage and timings). */
export function readRun(run: PageRun): {
  ids: number[];
  stamps: number[];
  timings: Chunk['timings'];
  promptTokens: number;
} {
  const ids: number[] = [];
  const stamps: number[] = [];
  let timings: Chunk['timings'];
  let promptTokens = NaN;
  run.chunks.forEach((c, i) => {
    const content = c.choices?.[0]?.logprobs?.content;
    if (content?.length) {
      for (const t of content) ids.push(t.id);
      stamps.push(run.stamps[i]);
    }
    if (c.timings) timings = c.timings;
    if (c.usage) promptTokens = c.usage.prompt_tokens;
  });
  if (timings && !Number.isFinite(promptTokens)) promptTokens = timings.prompt_n + timings.cache_n;
  return { ids, stamps, timings, promptTokens };
}

/**
 * compatDir: the assets of @wllama/wllama-compat (its wasm/ folder's parent) to run wllama's compat
 * build (wasm32 + Asyncify) instead of its default one (Memory64 + JSPI); not a dependency of this
 * project, an experiment (npm install --prefix /tmp/x @wllama/wllama-compat@3.13.0).
 */
export async function startWllama(opts: {
  gguf: string;
  threads: number;
  nCtx: number;
  log: (m: string) => void;
  nativeLog?: boolean;
  compatDir?: string;
}): Promise<PeerStart> {
  const row = `wllama${opts.compatDir ? ' compat build' : ''} (${opts.threads} thread${opts.threads > 1 ? 's' : ''})`;
  if (!existsSync(CHROMIUM)) return unavailable(row, `${CHROMIUM} is missing (apt-get install chromium)`);
  let server: PageServer | null = null;
  let browser: Browser | null = null;
  const cleanup = async () => {
    await browser?.close().catch(() => {});
    await server?.close().catch(() => {});
  };
  try {
    const { chromium } = await import('playwright-core');
    server = await servePeerPage(opts.gguf, opts.compatDir);
    const before = new Set(descendants(process.pid));
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const roots = descendants(process.pid).filter((p) => !before.has(p));
    const page: Page = await browser.newPage();
    page.on('pageerror', (e) => opts.log(`wllama page error: ${e.message}`));
    if (opts.nativeLog) page.on('console', (m) => opts.log(`wllama: ${m.text().slice(0, 300)}`));
    await page.goto(server.url);
    await page.waitForFunction(() => (window as unknown as { peerReady?: boolean }).peerReady === true, undefined, {
      timeout: 60_000,
    });
    const env = await page.evaluate(() =>
      (window as unknown as { peer: { env(): Record<string, unknown> } }).peer.env(),
    );
    if (!env.crossOriginIsolated) throw new Error('the page is not cross-origin isolated (COOP/COEP headers missing?)');
    const loaded = await page.evaluate(
      (o) => (window as unknown as { peer: { load(o: object): Promise<Loaded> } }).peer.load(o),
      { threads: opts.threads, nCtx: opts.nCtx, nBatch: 512, nativeLog: !!opts.nativeLog, compat: !!opts.compatDir },
    );
    if (loaded.threads !== opts.threads)
      throw new Error(
        `wllama runs ${loaded.threads} thread(s), asked for ${opts.threads} (multithread: ${loaded.multithread})`,
      );
    // The browser's processes: the page's renderer holds wllama's worker and its wasm memory.
    const pids = () => [...new Set([...roots, ...roots.flatMap(descendants)])];
    const b = browser;
    const peer: Peer = {
      row,
      info: {
        engine: `@wllama/wllama (libllama ${loaded.libllama})`,
        threads: loaded.threads,
        multithread: loaded.multithread,
        build: loaded.compat
          ? 'compat build (wasm32 + Asyncify, @wllama/wllama-compat)'
          : 'default build (Memory64 + JSPI)',
        n_batch: 512,
        browser: b.version(),
        cross_origin_isolated: env.crossOriginIsolated,
        webgpu: 'off (n_gpu_layers 0; headless Chromium has no adapter)',
        model_load_ms: Math.round(loaded.fetchMs + loaded.loadMs),
      },
      async run(prompt, decode, stop): Promise<PeerTrial> {
        const c0 = treeCpuMs(pids());
        const r = await page.evaluate(
          ([text, n, s]) =>
            (
              window as unknown as { peer: { run(t: string, n: number, s: number[] | null): Promise<PageRun> } }
            ).peer.run(text, n, s),
          [prompt.text, decode, stop ?? null] as [string, number, number[] | null],
        );
        const c1 = treeCpuMs(pids());
        const { ids, stamps, timings, promptTokens } = readRun(r);
        if (!stamps.length) throw new Error('wllama streamed no token');
        const ttftMs = stamps[0] - r.t0;
        const steps = Math.min(decode, ids.length - 1);
        const decodeMs = stamps[steps] - stamps[0];
        // The page clock is the headline (a browser row may use more than one thread); the browser's
        // CPU time per wall second of the call says whether it had its core(s) to itself.
        const total = stamps[stamps.length - 1] - r.t0;
        return {
          ttftMs,
          ttftCpuMs: Infinity,
          decodeMs,
          decodeCpuMs: Infinity,
          cpuPerWall: (c1 - c0) / total,
          tokens: stop ? ids : ids.slice(0, decode),
          promptTokens,
          own: timings
            ? { ttftMs: timings.prompt_ms, decodeMs: timings.predicted_ms, decodeTokens: timings.predicted_n - 1 }
            : undefined,
        };
      },
      peakRssMb: async () => maxPeakRssMb(pids()),
      async close() {
        await page
          .evaluate(() => (window as unknown as { peer: { exit(): Promise<void> } }).peer.exit())
          .catch(() => {});
        await cleanup();
      },
    };
    return { ok: true, peer };
  } catch (e) {
    await cleanup();
    return unavailable(row, `wllama could not run: ${(e as Error).message.split('\n')[0]}`);
  }
}

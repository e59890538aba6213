/**
 * The page the wllama peer runs in, and the HTTP server (127.0.0.1 only) that serves it
 * cross-origin isolated (COOP same-origin + COEP require-corp), which is what lets a page use
 * SharedArrayBuffer and therefore wasm threads:
 *   /            the page: imports wllama, exposes window.peer.{load, run}
 *   /wllama/...  node_modules/@wllama/wllama (its esm build and wasm, as a site would host them)
 *   /model.gguf  the GGUF file, streamed from where it lies (never copied)
 *   /compat/...  optionally, @wllama/wllama-compat's assets (wasm32 + Asyncify), for comparing builds
 */
import { createReadStream, existsSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { extname, join, normalize } from 'node:path';
import { REPO_ROOT } from '../../lib/node-env.js';

export const WLLAMA_DIR = join(REPO_ROOT, 'node_modules', '@wllama', 'wllama');

const ISOLATED = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
  'Cache-Control': 'no-store',
};
const TYPES: Record<string, string> = {
  '.js': 'text/javascript',
  '.wasm': 'application/wasm',
  '.html': 'text/html; charset=utf-8',
  '.gguf': 'application/octet-stream',
};

/**
 * The page's script. run() is one greedy completion from token ids (top_k 1, no penalties, no prompt
 * cache), streamed so that the page clock stamps every token as it arrives; wllama's own timings
 * (llama-server's prompt_ms / predicted_ms) come with the last chunk.
 */
const PAGE_SCRIPT = String.raw`
import { Wllama, LoggerWithoutDebug } from '/wllama/esm/index.js';
let wllama = null;
window.peer = {
  env() {
    return {
      crossOriginIsolated: self.crossOriginIsolated,
      sharedArrayBuffer: typeof SharedArrayBuffer !== 'undefined',
      jspi: !!WebAssembly.Suspending,
      hardwareConcurrency: navigator.hardwareConcurrency,
      webgpu: !!navigator.gpu,
      userAgent: navigator.userAgent,
    };
  },
  async load(opts) {
    const t0 = performance.now();
    const blob = await (await fetch('/model.gguf')).blob();
    const t1 = performance.now();
    wllama = new Wllama({ default: '/wllama/esm/wasm/wllama.wasm' }, { logger: opts.nativeLog ? console : LoggerWithoutDebug, suppressNativeLog: !opts.nativeLog });
    if (opts.compat) {
      // The compat build (wasm32, Asyncify instead of JSPI) is what wllama picks when JSPI is
      // missing; hiding JSPI from wllama's check makes it pick that build here too.
      Reflect.deleteProperty(WebAssembly, 'Suspending');
      wllama.setCompat({ worker: '/compat/wasm/wllama.js', wasm: '/compat/wasm/wllama.wasm' });
    } else {
      // No CDN fallback: if this browser needed the compat build, fail instead of fetching it.
      wllama.setCompat(null);
    }
    await wllama.loadModel([blob], { n_threads: opts.threads, n_ctx: opts.nCtx, n_batch: opts.nBatch, n_ubatch: opts.nBatch, n_gpu_layers: 0, n_parallel: 1, warmup: true });
    return {
      fetchMs: t1 - t0,
      loadMs: performance.now() - t1,
      multithread: wllama.isMultithread(),
      compat: !!opts.compat,
      threads: wllama.getNumThreads(),
      libllama: Wllama.getLibllamaVersion ? Wllama.getLibllamaVersion() : null,
      nVocab: wllama.getModelMetadata().hparams.nVocab,
    };
  },
  async run(prompt, decode, stop) {
    const stamps = [];
    const pieces = [];
    let last = null;
    const t0 = performance.now();
    await wllama.createCompletion({
      prompt,
      max_tokens: decode + 1,
      temperature: 0,
      top_k: 1,
      top_p: 1,
      min_p: 0,
      repeat_penalty: 1,
      presence_penalty: 0,
      frequency_penalty: 0,
      dry_multiplier: 0,
      ignore_eos: !stop,
      cache_prompt: false,
      return_tokens: true,
      n_probs: 1,
      stream: true,
      onData: (chunk) => {
        stamps.push(performance.now());
        pieces.push(chunk);
        last = chunk;
      },
    });
    return { t0, stamps, chunks: pieces };
  },
  async exit() {
    await wllama?.exit();
    wllama = null;
  },
};
window.peerReady = true;
`;

const PAGE = `<!doctype html><meta charset="utf-8"><title>wllama peer</title><script type="module">${PAGE_SCRIPT}</script>`;

export interface PageServer {
  url: string;
  close(): Promise<void>;
}

export function servePeerPage(gguf: string, compatDir?: string): Promise<PageServer> {
  if (!existsSync(join(WLLAMA_DIR, 'esm', 'index.js')))
    throw new Error(`${WLLAMA_DIR} is missing: npm install (the @wllama/wllama devDependency)`);
  const server: Server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    let file: string | null = null;
    if (path === '/') {
      res.writeHead(200, { ...ISOLATED, 'Content-Type': TYPES['.html'] });
      res.end(PAGE);
      return;
    }
    if (path === '/model.gguf') file = gguf;
    else if (path.startsWith('/wllama/')) {
      const rel = normalize(path.slice('/wllama/'.length));
      if (!rel.startsWith('..')) file = join(WLLAMA_DIR, rel);
    } else if (path.startsWith('/compat/') && compatDir) {
      const rel = normalize(path.slice('/compat/'.length));
      if (!rel.startsWith('..')) file = join(compatDir, rel);
    }
    if (!file || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404, ISOLATED);
      res.end('not found');
      return;
    }
    res.writeHead(200, {
      ...ISOLATED,
      'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream',
      'Content-Length': statSync(file).size,
    });
    createReadStream(file).pipe(res);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      if (!addr || typeof addr === 'string') return reject(new Error('no port'));
      resolve({ url: `http://127.0.0.1:${addr.port}/`, close: () => new Promise((r) => server.close(() => r())) });
    });
  });
}

/**
 * npm run chat-probe -- [--url http://127.0.0.1:8787] [--tokens 2000] [--max-tokens 32] [--repeat 2]
 * Sends one long chat prompt (a question after ~N tokens of ../shared/data/apache-2.0.txt) to a
 * running server (npm start), dense and lazy interleaved, streamed, and prints what a user sees: time to
 * first token on the client clock, the server's prefill time, decode tokens/s, and the memory
 * /healthz reports (budget, estimate, measured wasm heap). Progress on stderr, one JSON line on stdout.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fail, progress, REPO_ROOT, runMain } from '../lib/node-env.js';
import { licenseQuestion, streamChat } from './chat-stream.js';

interface Run {
  mode: 'dense' | 'lazy';
  ttft_ms: number;
  total_ms: number;
  prompt_tokens: number;
  completion_tokens: number;
  prefill_ms: number;
  decode_tokens_per_s: number;
  schedule: string;
  /** SSE comments before the first token, and the longest silence then (the server's keep-alives: src/worker/job/keep-alive.ts) */
  keepalive_comments: number;
  longest_silence_ms: number;
  text: string;
}

async function streamOnce(url: string, body: object, mode: Run['mode']): Promise<Run> {
  const { ttft_ms, total_ms, text, stats, usage, comments, longest_silence_ms } = await streamChat(url, body);
  return {
    mode,
    ttft_ms,
    total_ms,
    prompt_tokens: usage.prompt_tokens ?? stats.prompt_tokens,
    completion_tokens: usage.completion_tokens ?? stats.completion_tokens,
    prefill_ms: stats.prefill_ms,
    decode_tokens_per_s: stats.decode_tokens_per_s,
    schedule: stats.schedule,
    keepalive_comments: comments,
    longest_silence_ms,
    text,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      url: { type: 'string', default: 'http://127.0.0.1:8787' },
      tokens: { type: 'string', default: '2000' },
      'max-tokens': { type: 'string', default: '32' },
      repeat: { type: 'string', default: '2' },
      data: { type: 'string', default: resolve(REPO_ROOT, '../shared/data/apache-2.0.txt') },
    },
  });
  const url = values.url!.replace(/\/$/, '');
  const health = (await fetch(`${url}/healthz`).then(
    (r) => r.json(),
    () => fail(`no server at ${url} (start it with npm start)`),
  )) as { model: string };
  // ~4.6 characters a token on this prose (NOTES.md); the server reports the exact count.
  const chars = Math.round(Number(values.tokens) * 4.4);
  const doc = readFileSync(values.data!, 'utf8').replace(/\s+/g, ' ').slice(0, chars);
  const base = licenseQuestion(health.model, doc, Number(values['max-tokens']));
  const runs: Run[] = [];
  // Interleaved, the first pair discarded as warm-up (a fresh isolate runs its first steps slower).
  for (let i = 0; i <= Number(values.repeat); i++) {
    for (const mode of ['dense', 'lazy'] as const) {
      const r = await streamOnce(url, { ...base, lazy: { enabled: mode === 'lazy' } }, mode);
      progress(
        `${i === 0 ? 'warm-up ' : ''}${mode}: ${r.prompt_tokens} prompt tokens, TTFT ${r.ttft_ms.toFixed(0)} ms (prefill ${r.prefill_ms.toFixed(0)} ms), decode ${r.decode_tokens_per_s.toFixed(1)} tok/s, ${r.keepalive_comments} keep-alive comments (longest silence ${(r.longest_silence_ms / 1000).toFixed(1)} s), ${JSON.stringify(r.text.slice(0, 80))}`,
      );
      if (i > 0) runs.push(r);
    }
  }
  const after = (await fetch(`${url}/healthz`).then((r) => r.json())) as { memory: unknown };
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const summary = Object.fromEntries(
    (['dense', 'lazy'] as const).map((m) => {
      const rs = runs.filter((r) => r.mode === m);
      return [
        m,
        {
          ttft_ms: median(rs.map((r) => r.ttft_ms)),
          prefill_ms: median(rs.map((r) => r.prefill_ms)),
          decode_tokens_per_s: median(rs.map((r) => r.decode_tokens_per_s)),
          schedule: rs[0].schedule,
          text: rs[0].text,
        },
      ];
    }),
  );
  process.stdout.write(
    `${JSON.stringify({ url, model: health.model, prompt_tokens: runs[0].prompt_tokens, summary, ttft_speedup: summary.dense.ttft_ms / summary.lazy.ttft_ms, memory: after.memory, runs })}\n`,
  );
}

runMain(main);

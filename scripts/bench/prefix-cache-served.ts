/**
 * The prefix cache in the served Worker: prefix-cache.ts's document and questions sent over HTTP as
 * streamed stateless chat requests to a running server (its prefix cache on, as by default), TTFT
 * taken at the first content chunk. Dense, then lazy on a document of its own (a tag opens it, so
 * that the lazy questions do not reuse the dense ones' state).
 *
 *   npx tsx scripts/serve.ts --port 8801 --var MODEL_NAME:smollm2-135m-instruct --var MEMORY_BUDGET_MB:1024 --var REQUEST_BUDGET_MS:600000 &
 *   flock /tmp/lazy-edge-cpu.lock env LAZY_EDGE_MEMORY_BUDGET_MB=off npx tsx scripts/bench/prefix-cache-served.ts --url http://127.0.0.1:8801
 */
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { loadModelFromDir, progress, runMain, shardsDir } from '../lib/node-env.js';
import { scoreReply } from '../quality/tasks.js';
import { makeDoc, questionMessage } from './prefix-doc.js';

interface Chunk {
  choices: { delta?: { content?: string } }[];
  usage?: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } } | null;
}

/** One streamed request: TTFT (first content chunk), the text and the usage. */
async function ask(url: string, model: string, content: string, lazy: object, maxTokens: number) {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      model,
      messages: [{ role: 'user', content }],
      max_tokens: maxTokens,
      temperature: 0,
      lazy,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let ttft = NaN;
  let text = '';
  let usage: Chunk['usage'] = null;
  let buf = '';
  const decoder = new TextDecoder();
  for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(part, { stream: true });
    let end: number;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
      const c = JSON.parse(event.slice(6)) as Chunk;
      const d = c.choices[0]?.delta?.content ?? '';
      if (d && Number.isNaN(ttft)) ttft = performance.now() - t0;
      text += d;
      usage = c.usage ?? usage;
    }
  }
  return { ttft, text: text.trim(), usage: usage! };
}

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      url: { type: 'string', default: 'http://127.0.0.1:8787' },
      model: { type: 'string', default: 'smollm2-135m-instruct' },
      tokens: { type: 'string', default: '2000' },
      questions: { type: 'string', default: '8' },
      'max-tokens': { type: 'string', default: '12' },
      seed: { type: 'string', default: '7' },
    },
  });
  // The tokenizer sizes the document as the server will count it.
  const model = await loadModelFromDir(shardsDir(a.model!));
  const questions = Number(a.questions);
  const maxTokens = Number(a['max-tokens']);
  const doc = makeDoc(model, Number(a.tokens) - 8, questions, Number(a.seed));
  const load = execFileSync('uptime').toString().trim();
  progress(`${a.url}: ${load}`);
  const lines = [
    '| mode | question | prompt tokens | cached_tokens | TTFT ms | / first | reply | right |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const [mode, lazy] of [
    ['dense', { enabled: false }],
    ['lazy', {}],
  ] as const) {
    let first = NaN;
    for (const [q, f] of doc.facts.entries()) {
      const r = await ask(a.url!, a.model!, questionMessage(`(${mode}) ${doc.text}`, f.label), lazy, maxTokens);
      if (q === 0) first = r.ttft;
      const line = `| ${mode} | ${q + 1} (${f.label}) | ${r.usage.prompt_tokens} | ${r.usage.prompt_tokens_details.cached_tokens} | ${r.ttft.toFixed(0)} | ${(r.ttft / first).toFixed(3)} | ${r.text.replaceAll('|', '\\|')} | ${scoreReply(r.text, f.key) ? 'yes' : 'no'} |`;
      lines.push(line);
      progress(line);
    }
  }
  const after = execFileSync('uptime').toString().trim();
  process.stdout.write(`${new Date().toISOString()}\nload before: ${load}\nafter: ${after}\n\n${lines.join('\n')}\n`);
}

runMain(main);

/**
 * One streamed chat completion against a running server, read as a user's client reads it: time to
 * the first content piece on this clock, the whole text, and the server's `lazy_stats` and `usage`
 * from the stream's last events; and the one long question the probes ask (chat-probe, split-probe).
 *
 * Sent with node:http rather than fetch: Node's fetch (undici) gives up on a response whose headers
 * or next body bytes take over 300 s, and a split 8k prefill took 300-450 s. The server sends SSE
 * comment lines while it prefills (src/worker/job/keep-alive.ts), which are skipped here; a server
 * without them must still be timed, not cut off.
 */
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { fail } from '../lib/node-env.js';

export interface StreamedChat {
  ttft_ms: number;
  total_ms: number;
  text: string;
  /** the server's lazy_stats, untyped here: each probe reads the fields it reports */
  stats: Record<string, any>;
  usage: Record<string, number>;
  /** SSE comment lines the server sent (keep-alives while it prefilled) */
  comments: number;
  /** the longest the stream stayed silent (no event, no comment) between the request and the first content piece */
  longest_silence_ms: number;
}

/** POSTs `body` as JSON without a time limit; resolves with the status and the body as a stream of text. */
function post(url: URL, body: string): Promise<{ status: number; chunks: AsyncIterable<string> }> {
  const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = send(
      url,
      { method: 'POST', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } },
      (res) => {
        res.setEncoding('utf8');
        resolve({ status: res.statusCode ?? 0, chunks: res });
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

export async function streamChat(url: string, body: object): Promise<StreamedChat> {
  const t0 = performance.now();
  const res = await post(new URL(`${url}/v1/chat/completions`), JSON.stringify(body));
  if (res.status !== 200) {
    let text = '';
    for await (const c of res.chunks) text += c;
    fail(`HTTP ${res.status}: ${text}`);
  }
  let ttft = NaN;
  let text = '';
  let stats: StreamedChat['stats'] = {};
  let usage: StreamedChat['usage'] = {};
  let comments = 0;
  let heard = t0;
  let silence = 0;
  let buf = '';
  for await (const value of res.chunks) {
    if (Number.isNaN(ttft)) {
      const now = performance.now();
      silence = Math.max(silence, now - heard);
      heard = now;
    }
    buf += value;
    let end: number;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      if (event.startsWith(':')) {
        comments++;
        continue;
      }
      const data = event.slice('data: '.length);
      if (data === '[DONE]') continue;
      const ev = JSON.parse(data);
      if (ev.error) fail(`stream error: ${JSON.stringify(ev.error)}`);
      const piece = ev.choices?.[0]?.delta?.content;
      if (piece && Number.isNaN(ttft)) ttft = performance.now() - t0;
      if (piece) text += piece;
      if (ev.lazy_stats) stats = ev.lazy_stats;
      if (ev.usage) usage = ev.usage;
    }
  }
  return { ttft_ms: ttft, total_ms: performance.now() - t0, text, stats, usage, comments, longest_silence_ms: silence };
}

/** The probes' request: a license text, then one question about it, answered greedily and streamed with its usage. */
export function licenseQuestion(model: string, doc: string, maxTokens: number) {
  const question = 'In one sentence: what does this license let people do with the Work?';
  return {
    model,
    messages: [{ role: 'user', content: `${doc}\n\n${question}` }],
    max_tokens: maxTokens,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  };
}

/**
 * One streamed chat completion against a running server, read as a user's client reads it: time to
 * the first content piece on this clock, the whole text, and the server's `lazy_stats` and `usage`
 * from the stream's last events. Used by the probes that time a served Worker from outside.
 */
import { fail } from './node-env.js';

export interface StreamedChat {
  ttft_ms: number;
  total_ms: number;
  text: string;
  /** the server's lazy_stats, untyped here: each probe reads the fields it reports */
  stats: Record<string, any>;
  usage: Record<string, number>;
}

export async function streamChat(url: string, body: object): Promise<StreamedChat> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  if (!res.ok || !res.body) fail(`HTTP ${res.status}: ${await res.text()}`);
  let ttft = NaN;
  let text = '';
  let stats: StreamedChat['stats'] = {};
  let usage: StreamedChat['usage'] = {};
  let buf = '';
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += value;
    let end: number;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const data = buf.slice(6, end);
      buf = buf.slice(end + 2);
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
  return { ttft_ms: ttft, total_ms: performance.now() - t0, text, stats, usage };
}

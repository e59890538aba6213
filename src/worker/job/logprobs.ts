import type { TokenLogprob } from '../../engine/logprobs.js';
import type { TextTokenizer } from '../../model/text-tokenizer.js';

/**
 * OpenAI's logprobs objects from the engine's per-token logprobs (src/engine/logprobs.ts, which
 * documents the distribution: the model's log_softmax before temperature, top-k and top-p, as
 * OpenAI reports it). The engine gives ids; here they become token strings, UTF-8 bytes and text
 * offsets, then chat's `{content: [...]}` or the legacy completions' `{tokens, token_logprobs,
 * top_logprobs, text_offset}`.
 */

/** One generated token, tokenizer-resolved; plain data, so it crosses the Durable Object RPC boundary. */
export interface ShapedLogprob {
  token: string;
  bytes: number[];
  logprob: number;
  /** where the token's text starts in the completion (UTF-16 units, as JavaScript counts) */
  offset: number;
  top: { token: string; bytes: number[]; logprob: number }[];
}

const utf8 = new TextEncoder();
const strict = new TextDecoder('utf-8', { fatal: true });

/**
 * OpenAI's token string: the token's text, or `bytes:\xHH…` for bytes that are not whole UTF-8
 * characters (a byte-fallback token opening a character), as OpenAI writes them.
 */
function tokenString(bytes: Uint8Array): string {
  try {
    return strict.decode(bytes);
  } catch {
    return `bytes:${Array.from(bytes, (b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')}`;
  }
}

type PieceBytes = (prev: number, id: number) => Uint8Array;

/**
 * A token's own bytes. llama2.c's tokenizer has them (`decodePieceBytes`: the piece after `prev`,
 * byte tokens as their byte). The TextTokenizer interface has no such method, so other tokenizers
 * fall back to the UTF-8 of the token decoded alone, which is exact except for a token holding part
 * of a character (its bytes then read as U+FFFD).
 */
function pieceBytesOf(tok: TextTokenizer): PieceBytes {
  const own = (tok as { decodePieceBytes?: unknown }).decodePieceBytes;
  if (typeof own === 'function') return (prev, id) => (own as PieceBytes).call(tok, prev, id);
  return (_prev, id) => utf8.encode(tok.decode([id]));
}

/**
 * Resolves the logprobs of one generation, in order, across calls (a stream resolves each chunk's
 * tokens as they come): it tracks the previous token (a llama2.c piece after BOS loses its leading
 * space) and the text offset. `prev` is the last prompt token.
 */
export class LogprobShaper {
  private readonly bytesOf: PieceBytes;
  private readonly decoder;
  private offset = 0;

  constructor(
    tok: TextTokenizer,
    private prev: number,
  ) {
    this.bytesOf = pieceBytesOf(tok);
    this.decoder = tok.createDecoder({ prev });
  }

  shape(lps: readonly TokenLogprob[] | undefined): ShapedLogprob[] {
    return (lps ?? []).map((lp) => {
      const entry = (id: number, logprob: number) => {
        const b = this.bytesOf(this.prev, id);
        return { token: tokenString(b), bytes: Array.from(b), logprob };
      };
      const shaped = {
        ...entry(lp.id, lp.logprob),
        offset: this.offset,
        top: lp.top.map((t) => entry(t.id, t.logprob)),
      };
      this.offset += this.decoder.push(lp.id).length;
      this.prev = lp.id;
      return shaped;
    });
  }
}

/** Chat's `choices[].logprobs`: `{content: [{token, logprob, bytes, top_logprobs}], refusal: null}`. */
export function chatLogprobs(s: readonly ShapedLogprob[]) {
  return {
    content: s.map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes, top_logprobs: t.top })),
    refusal: null,
  };
}

/**
 * The legacy completions' `choices[].logprobs`. Its `top_logprobs` maps token strings to logprobs:
 * the `logprobs` most likely tokens plus the sampled one (OpenAI: "up to logprobs+1 elements").
 */
export function completionLogprobs(s: readonly ShapedLogprob[]) {
  return {
    tokens: s.map((t) => t.token),
    token_logprobs: s.map((t) => t.logprob),
    top_logprobs: s.map((t) => {
      const m: Record<string, number> = {};
      for (const a of t.top) if (!Object.hasOwn(m, a.token)) m[a.token] = a.logprob;
      if (!Object.hasOwn(m, t.token)) m[t.token] = t.logprob;
      return m;
    }),
    text_offset: s.map((t) => t.offset),
  };
}

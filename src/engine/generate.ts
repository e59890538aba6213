import { SequenceState } from './caches.js';
import { decodeLoop, type StepRunner } from './decode-loop.js';
import { EngineError } from './errors.js';
import type { LoadedModel } from './model.js';
import { tokenLogprobs, type TokenLogprob } from './logprobs.js';
import { formatSchedule, type Schedule, type TokenSpan } from './policy.js';
import { Sampler, type SamplerOptions } from './sampler.js';
import type { LayerTrace, StepStats } from './step.js';
import type { LazyTrace } from './trace.js';

export type { StepRunner } from './decode-loop.js';

/**
 * Why a generation ended: an end-of-generation token or a stop string, max_tokens, or the deadline
 * (the request's time budget) before max_tokens: never reported as "length", which it is not.
 */
export type FinishReason = 'stop' | 'length' | 'time_limit';

export interface GenerateOptions {
  maxTokens: number;
  sampler: SamplerOptions;
  /** generation ends before the first occurrence of any of these; the text excludes it */
  stop?: readonly string[];
  /** null = dense */
  schedule: Schedule | null;
  /**
   * [from, to) sequence indices of the question's tokens (the final user message's last paragraph,
   * src/model/chat-prompt.ts), all within this prompt; null for text without one. The schedule's
   * query signal ranks by their attention.
   */
  question?: TokenSpan | null;
  /** performance.now() value after which no further token is started (finish_reason "time_limit") */
  deadline?: number;
  /**
   * receives text as soon as it is safe to show (never part of a stop string). With `logprobs`,
   * also the logprobs of the tokens released with it: a token goes out with the piece that
   * completes its text (one that only opens a character, with the piece that closes it), the last
   * call carries every token not sent yet (then `delta` may be ""), and in all they are `tokens`.
   */
  onText?: (delta: string, logprobs?: TokenLogprob[]) => void | Promise<void>;
  /** compute each generated token's logprob and its `top` alternatives (src/engine/logprobs.ts); off when absent */
  logprobs?: { top: number };
  /**
   * Awaited before every decode step, whether or not text was released: the host yields to its
   * event loop here (other requests take turns) and throws to stop a generation nobody waits for.
   */
  beforeStep?: () => void | Promise<void>;
  /** awaited as the prefill step goes (StepOptions.progress): before the first token, a client sees nothing else */
  onPrefillProgress?: () => void | Promise<void>;
  trace?: LayerTrace;
  /** runs each step (default: runStep on the whole model); a split model passes its chain of layer groups (src/engine/layer-group.ts) */
  step?: StepRunner;
}

/** Figures of one generation; snake_case because they travel as JSON to the CLI and HTTP clients. */
export interface GenerationStats {
  schedule: string;
  prompt_tokens: number;
  completion_tokens: number;
  prefill_ms: number;
  decode_ms: number;
  decode_tokens_per_s: number;
  /** query rows per layer summed over every step of this generation */
  computed_per_layer: number[];
  /** the same for the prefill step alone */
  prefill_computed_per_layer: number[];
  revived: number;
  aux_entries: number;
  aux_bytes: number;
  kv_entries: number;
  kv_bytes: number;
  flops: number;
  dense_flops: number;
  flops_ratio: number;
  /** tokens resumed from the Aux Cache per layer (job/run.ts adds it: a request reusing a cached prefix revives what an earlier one pruned) */
  revived_per_layer?: number[];
  /** the isolate's prefix cache after a stateless request gave its state back (src/engine/prefix-cache.ts) */
  prefix_cache?: { entries: number; bytes: number };
  /** why the generation ended early, when it did (the request's time budget ran out: finish_reason "time_limit") */
  note?: string;
  /** only when the caller asked for it (a TraceRecorder, src/engine/trace.ts): what was computed and pruned */
  trace?: LazyTrace;
}

export interface GenerateResult {
  text: string;
  tokens: number[];
  promptTokens: number;
  finishReason: FinishReason;
  stats: GenerationStats;
  /** tokens resumed from the Aux Cache per layer, over every step */
  revivedPerLayer: number[];
  /** with GenerateOptions.logprobs: one per entry of `tokens` */
  logprobs?: TokenLogprob[];
}

/** Length of the longest suffix of `text` that begins some stop string: text we must hold back. */
function heldBack(text: string, stops: readonly string[]): number {
  let hold = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, text.length); k > hold; k--) {
      if (text.endsWith(s.slice(0, k))) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}

/**
 * Prefill `prompt` (appended to whatever `seq` already holds, so chat turns reuse their caches),
 * then decode. Ends on an end-of-generation id (EOS, an end-of-turn marker; for stories260K also
 * BOS, how a story ends), a stop string, maxTokens or the deadline. The sequence keeps every token that was fed through the model.
 */
export async function generate(
  model: LoadedModel,
  seq: SequenceState,
  prompt: readonly number[],
  opts: GenerateOptions,
): Promise<GenerateResult> {
  if (prompt.length === 0)
    throw new EngineError('the prompt must hold at least one token (BOS)', 'invalid_request', 'prompt');
  if (!Number.isInteger(opts.maxTokens) || opts.maxTokens < 1)
    throw new EngineError(`max_tokens ${opts.maxTokens} must be a positive integer`, 'invalid_request', 'max_tokens');
  const stops = (opts.stop ?? []).filter((s) => s.length > 0);
  const tok = model.tokenizer;
  const sampler = new Sampler(opts.sampler);
  const L = model.config.nLayers;
  const computed = new Array(L).fill(0);
  let revived = 0;
  let flops = 0;
  let denseFlops = 0;
  const revivedPerLayer = new Array(L).fill(0);
  const account = (s: StepStats) => {
    s.computedPerLayer.forEach((c, l) => (computed[l] += c));
    s.revivedPerLayer.forEach((r, l) => (revivedPerLayer[l] += r));
    revived += s.revived;
    flops += s.flops;
    denseFlops += s.denseFlops;
  };

  // Every row the generation can need, at once: growing by doubling at the first decode step would
  // copy every layer's rows (and hold both copies) right after a long prefill.
  seq.reserve(seq.length + prompt.length + opts.maxTokens);
  const loop = decodeLoop(model, seq, prompt, {
    schedule: opts.schedule,
    question: opts.question,
    trace: opts.trace,
    onPrefillProgress: opts.onPrefillProgress,
    step: opts.step,
    pick: (logits) => sampler.sample(logits),
  });

  const tokens: number[] = [];
  const decoder = tok.createDecoder({ prev: prompt[prompt.length - 1] });
  let text = '';
  let emitted = 0;
  let finishReason: FinishReason = 'length';
  let prefill: StepStats | undefined;
  let tDecode = 0;
  let decodeSteps = 0;
  let cutAtStop = false;
  const top = opts.logprobs?.top;
  const logprobs: TokenLogprob[] | undefined = top === undefined ? undefined : [];
  // logprobs[k] ends at text offset ends[k]; logprobs[sent..] have not gone out with a piece yet
  const ends: number[] = [];
  let sent = 0;
  const release = (upTo: number): TokenLogprob[] | undefined => {
    if (!logprobs) return undefined;
    const from = sent;
    while (sent < logprobs.length && ends[sent] <= upTo) sent++;
    return logprobs.slice(from, sent);
  };
  for await (const { token: next, logits, stats } of loop) {
    account(stats);
    if (!prefill) {
      prefill = stats;
      tDecode = performance.now();
    } else decodeSteps++;
    if (tok.endIds.has(next)) {
      finishReason = 'stop';
      break;
    }
    tokens.push(next);
    text += decoder.push(next);
    if (logprobs) {
      logprobs.push(tokenLogprobs(logits, next, top!));
      ends.push(text.length);
    }
    const hit = stops.map((s) => text.indexOf(s)).filter((i) => i >= 0);
    if (hit.length) {
      text = text.slice(0, Math.min(...hit));
      finishReason = 'stop';
      cutAtStop = true;
      break;
    }
    const safe = text.length - heldBack(text, stops);
    if (opts.onText && safe > emitted) await opts.onText(text.slice(emitted, safe), release(safe));
    emitted = Math.max(emitted, safe);
    if (tokens.length >= opts.maxTokens) break;
    await opts.beforeStep?.();
    if (opts.deadline !== undefined && performance.now() >= opts.deadline) {
      finishReason = 'time_limit';
      break;
    }
  }
  // Whatever ended the generation, an unfinished UTF-8 character still held by the decoder comes
  // out (as U+FFFD); only text cut at a stop string has nothing after the cut to show.
  if (!cutAtStop) text += decoder.flush();
  if (opts.onText && (text.length > emitted || (logprobs && sent < logprobs.length)))
    await opts.onText(text.slice(emitted), release(Infinity));

  const decodeMs = performance.now() - tDecode;
  return {
    text,
    tokens,
    promptTokens: prompt.length,
    finishReason,
    ...(logprobs ? { logprobs } : {}),
    revivedPerLayer,
    stats: {
      schedule: opts.schedule ? formatSchedule(opts.schedule) : 'dense',
      prompt_tokens: prompt.length,
      completion_tokens: tokens.length,
      prefill_ms: prefill!.ms,
      decode_ms: decodeMs,
      // decode steps actually run (a token that ended the generation was sampled but never fed)
      decode_tokens_per_s: decodeSteps > 0 ? (decodeSteps * 1000) / decodeMs : 0,
      computed_per_layer: computed,
      prefill_computed_per_layer: prefill!.computedPerLayer,
      revived,
      aux_entries: seq.aux.size,
      aux_bytes: seq.aux.bytes,
      kv_entries: seq.kvEntries(),
      kv_bytes: seq.kvBytes(),
      flops,
      dense_flops: denseFlops,
      flops_ratio: denseFlops > 0 ? flops / denseFlops : 1,
    },
  };
}

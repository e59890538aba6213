import type { FinishReason, GenerationStats } from '../../engine/generate.js';
import type { TurnStats } from '../../engine/turns.js';
import type { Failure, Result } from '../faults.js';
import type { CacheFigures } from '../groups/types.js';
import type { CommonOptions, Usage } from '../job/plan.js';
import type { ShapedLogprob } from '../job/logprobs.js';
import type { ChatMessage } from '../../model/chat-prompt.js';

/** What crosses the RPC boundary between the HTTP routes (routes/sessions.ts) and a ChatSession. */

export interface StoredMessage {
  role: ChatMessage['role'];
  content: string;
}

export interface CacheStats extends CacheFigures {
  /** how many tokens stopped at each depth 0..nLayers */
  depth_histogram: number[];
  turns: number;
  /** "records" when the state came from the stored log, "rebuilt" after a recovery */
  state_source: 'records' | 'rebuilt' | 'new';
  recoveries: number;
  last_recovery: string | null;
}

export interface SessionInfo {
  id: string;
  model: string;
  created: number;
  last_active: number;
  expires_at: number;
  ttl_seconds: number;
  messages: StoredMessage[];
  stats: CacheStats;
}

export type { Failure };
export type { Result };

export interface TurnRequest {
  owner: string;
  /** "append": `messages` follow the stored conversation (POST /v1/sessions/:id/messages);
   *  "replace": `messages` are the whole conversation (chat completions with a session) */
  mode: 'append' | 'replace';
  messages: ChatMessage[];
  options: CommonOptions;
  /** names used in error messages */
  maxTokensParam: string;
  maxTokens?: number | null;
  /** logprobs asked for: alternatives per token; null or absent = off */
  logprobs?: number | null;
  /** the request's Idempotency-Key header (session/idempotency.ts) */
  idempotencyKey?: string;
  /** streamed: the most milliseconds a prefill stays silent before a "progress" event (STREAM_KEEPALIVE_MS of the Worker that streams it) */
  keepAliveMs?: number;
}

/**
 * `logprobs` (when the turn asked for them): those of the tokens released with this text.
 * "progress": the turn is still prefilling (at most once per TurnRequest.keepAliveMs); the HTTP
 * layer writes an SSE comment for it, which keeps a silent stream open (keep-alive.ts).
 */
export type TurnEvent =
  | { type: 'start' }
  | { type: 'progress' }
  | { type: 'text'; text: string; logprobs?: ShapedLogprob[] };
/**
 * Receives a streamed turn's events; resolving to `false` (or throwing) says the client is gone and
 * the turn is abandoned. The HTTP layer answers `false` rather than throwing: an exception thrown
 * by an RPC callback is reported by workerd as an uncaught error, and a hang-up is no error.
 */
export type TurnListener = (e: TurnEvent) => Promise<boolean | void>;

export interface TurnOutcome {
  text: string;
  finishReason: FinishReason;
  usage: Usage & { prompt_tokens_details: { cached_tokens: number } };
  stats: GenerationStats;
  /** when the turn asked for them (a streamed turn sent them with its text instead) */
  logprobs?: ShapedLogprob[];
  session: {
    id: string;
    turn: number;
    /** true when this is the stored outcome of an earlier request with the same Idempotency-Key */
    replayed?: boolean;
    stats: TurnStats & { delta_bytes: number; compacted: boolean; cache: CacheStats };
  };
}

import { failureOf, type Failure } from '../faults.js';
import type { CacheStats, Result, TurnListener, TurnOutcome, TurnRequest } from './types.js';

/**
 * Idempotency keys of session turns (the `Idempotency-Key` header): a turn's outcome is stored
 * under its key in the same transaction that commits the turn, so a client whose stream broke
 * (even by a kill -9 just after the commit, before it saw [DONE]) can send the request again with
 * the same key and get the stored turn back instead of a second one. Keys live as long as their
 * session and are checked against the request they first came with.
 */

const SCHEMA = `CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, request TEXT NOT NULL, outcome TEXT NOT NULL)`;

/** what a key is bound to: the turn's content, not how it is delivered (streamed or not) */
export function requestFingerprint(req: TurnRequest): string {
  const { stream: _s, stream_options: _o, ...options } = req.options;
  return JSON.stringify({
    mode: req.mode,
    messages: req.messages,
    options,
    maxTokens: req.maxTokens ?? null,
    logprobs: req.logprobs ?? null,
  });
}

/** The stored outcome for `key` (sessions made before keys existed have no table yet). */
function lookup(sql: SqlStorage, key: string): { request: string; outcome: TurnOutcome } | null {
  sql.exec(SCHEMA);
  const row = sql.exec('SELECT request, outcome FROM idempotency WHERE key = ?', key).toArray()[0];
  return row ? { request: row.request as string, outcome: JSON.parse(row.outcome as string) as TurnOutcome } : null;
}

/** Inside the turn's transaction. The trace is left out: a row may hold at most 2 MB. */
export function recordOutcome(sql: SqlStorage, key: string, req: TurnRequest, outcome: TurnOutcome): void {
  sql.exec(SCHEMA);
  const { trace: _t, ...stats } = outcome.stats;
  sql.exec(
    'INSERT INTO idempotency (key, request, outcome) VALUES (?, ?, ?)',
    key,
    requestFingerprint(req),
    JSON.stringify({ ...outcome, stats }),
  );
}

/**
 * The stored turn for the request's key, with the session's cache figures as they are now, sent as
 * a streamed turn would be (one text event) when `onEvent` is given; null when the key is new. A key
 * sent with another request is refused (422) and changes nothing.
 */
export async function replayStored(
  sql: SqlStorage,
  req: TurnRequest,
  cache: CacheStats | null,
  onEvent?: TurnListener,
): Promise<Result<TurnOutcome> | Failure | null> {
  const key = req.idempotencyKey;
  if (key === undefined) return null;
  const stored = lookup(sql, key);
  if (!stored) return null;
  if (stored.request !== requestFingerprint(req)) {
    return failureOf(
      422,
      `Idempotency-Key '${key}' was already used for a different request on this session; use a new key for a new turn.`,
      'idempotency_key_reused',
      'Idempotency-Key',
    );
  }
  const outcome: { ok: true } & TurnOutcome = {
    ...stored.outcome,
    ok: true,
    session: {
      ...stored.outcome.session,
      replayed: true,
      stats: { ...stored.outcome.session.stats, cache: cache ?? stored.outcome.session.stats.cache },
    },
  };
  if (onEvent) {
    await onEvent({ type: 'start' });
    if (outcome.text)
      await onEvent({ type: 'text', text: outcome.text, ...(outcome.logprobs ? { logprobs: outcome.logprobs } : {}) });
    delete outcome.logprobs;
  }
  return outcome;
}

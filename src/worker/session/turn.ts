import { emptyView, encodeDelta, snapshotBytes } from '../../engine/state-codec.js';
import { encodeChat, messageText } from '../../model/chat-prompt.js';
import { failureOf, failureFrom, type Failure } from '../faults.js';
import { planJob, yieldToEventLoop, type Job } from '../job/plan.js';
import { budgetPath, runJob } from '../job/run.js';
import { checkBudget } from '../job/budget.js';
import { commonPrefix } from '../../engine/turns.js';
import { DEFAULTS } from '../config.js';
import type { Env } from '../env.js';
import { prefillKeepAlive } from '../job/keep-alive.js';
import { recordOutcome } from './idempotency.js';
import { cacheStats, type Live } from './live.js';
import { insertTurn, updateCounts, writeChunks, writeMessages } from './store.js';
import type { Result, StoredMessage, TurnEvent, TurnListener, TurnOutcome, TurnRequest } from './types.js';

/** max_tokens of a session message when the client sets none (capped by the room left in the context). */
export const SESSION_DEFAULT_MAX_TOKENS = 128;

/** The turn was abandoned because its client went away; the HTTP layer writes nothing more. */
const goneFailure = (): Failure =>
  failureOf(499, 'The client closed the stream; the turn was abandoned and nothing was stored.', 'client_gone');

export interface TurnHost {
  storage: DurableObjectStorage;
  env: Partial<Env>;
  ttlMs(): number;
  /** called when the turn failed after memory started changing: memory must be reloaded from storage */
  discardMemory(): Promise<void>;
}

/**
 * One chat turn on a loaded session. Everything that can be refused is checked before the state is
 * touched; with `onEvent`, a "start" event marks the point after which the reply streams as "text"
 * events. Memory changes only inside the turn and storage only at its end, in one transaction; a
 * turn that fails leaves storage untouched and has the host reload memory from it.
 */
export async function playTurn(
  host: TurnHost,
  live: Live,
  req: TurnRequest,
  onEvent?: TurnListener,
): Promise<Result<TurnOutcome>> {
  const startedAt = performance.now();
  const { model } = live;
  const sql = host.storage.sql;
  const incoming = req.messages.map((m) => ({ role: m.role, content: messageText(m) }));
  const conversation = req.mode === 'append' ? [...live.messages, ...incoming] : incoming;
  let job: Job;
  try {
    const { prompt, question } = encodeChat(model.tokenizer, model.manifest.chatTemplate, conversation);
    const room = model.config.seqLen - prompt.length;
    job = planJob(host.env, startedAt, model, prompt, req.options, {
      promptParam: 'messages',
      maxTokensParam: req.maxTokensParam,
      maxTokens: req.maxTokens,
      defaultMaxTokens:
        req.mode === 'append' ? Math.max(1, Math.min(SESSION_DEFAULT_MAX_TOKENS, room)) : Math.max(1, room),
      logprobs: req.logprobs,
      question,
    });
    checkBudget(job, commonPrefix(live.seq.tokens, job.prompt), budgetPath(job, live.chain !== undefined));
  } catch (e) {
    return failureFrom(e, 'session turn (validation)');
  }
  // The caller's callback failing means the client is gone (a hung-up stream): not our fault, not logged.
  let clientGone = false;
  const emit = async (e: TurnEvent) => {
    let wanted: boolean | void;
    try {
      wanted = await onEvent!(e);
    } catch (err) {
      clientGone = true;
      throw err;
    }
    if (wanted === false) {
      clientGone = true;
      throw new Error('client gone');
    }
  };
  if (onEvent) {
    try {
      await emit({ type: 'start' });
    } catch {
      return goneFailure();
    }
  }

  // From here on memory changes; on any failure it is reloaded from storage, which this turn has not touched.
  let attemptDone: (() => void) | undefined;
  let attemptId: string | undefined;
  try {
    // Split layers: this turn is one attempt through the session's groups (session/split.ts).
    const attempt = live.chain?.attempt(live.turns);
    attemptDone = attempt?.done;
    attemptId = attempt?.id;
    const { outcome: out, turn } = await runJob(
      job,
      attempt ? attempt.runner.jobRunner(live.seq, live.groups?.depth) : { seq: live.seq },
      {
        // Before every token, streamed or not, a zero-delay timer lets other requests take their
        // turn (a concurrent message or DELETE is refused with 409 at once rather than queued
        // behind this turn; /healthz answers), and lets the deployed clock move for the request
        // budget. A hung-up stream stops here, within a token.
        beforeStep: async () => {
          await yieldToEventLoop();
          if (clientGone) throw new Error('client gone');
        },
        // Streamed: each piece goes out as it is released.
        onText: onEvent
          ? (text, logprobs) => emit({ type: 'text', text, ...(logprobs ? { logprobs } : {}) })
          : undefined,
        // Streamed: a long prefill says now and then that it is still at work (keep-alive.ts).
        onPrefillProgress: onEvent
          ? prefillKeepAlive(() => emit({ type: 'progress' }), req.keepAliveMs ?? DEFAULTS.STREAM_KEEPALIVE_MS)
          : undefined,
      },
    );
    const r = turn.result;
    const reply: StoredMessage = { role: 'assistant', content: r.text };
    const messages = [...conversation, reply];

    // Split: every group stores its part of the turn as pending first; the transaction below commits it.
    const groupBytes = attempt ? await live.chain!.prepare(live.turns, attempt.id) : [];
    let delta = attempt
      ? { chunks: [] as Uint8Array[], view: live.view }
      : encodeDelta(live.seq, live.view, { fingerprint: live.fingerprint });
    let deltaBytes = delta.chunks.reduce((s, c) => s + c.byteLength, 0) + groupBytes.reduce((a, b) => a + b, 0);
    // Truncations leave dead records behind; once the log is over twice the live state, rewrite it once.
    const compacted = !attempt && live.recordBytes + deltaBytes > 2 * snapshotBytes(live.seq) + 65_536;
    if (compacted) {
      delta = encodeDelta(live.seq, emptyView(), { fingerprint: live.fingerprint });
      deltaBytes = delta.chunks.reduce((s, c) => s + c.byteLength, 0);
    }
    const turnIdx = live.turns;
    const now = Date.now();
    const outcome: { ok: true } & TurnOutcome = {
      ok: true,
      ...out,
      session: {
        id: live.meta.session_id,
        turn: turnIdx,
        // the cache figures are read again once the turn is committed (below)
        stats: { ...turn.stats, delta_bytes: deltaBytes, compacted, cache: live.committed ?? cacheStats(live, sql) },
      },
    };
    host.storage.transactionSync(() => {
      writeChunks(sql, compacted ? 0 : live.view.nextSeq, delta.chunks, compacted);
      insertTurn(sql, turnIdx, turn.record, live.fingerprint);
      if (req.mode === 'append') writeMessages(sql, live.messages.length, messages.slice(live.messages.length));
      else writeMessages(sql, 0, messages, true);
      updateCounts(sql, live.seq.length, delta.view.nextSeq, now);
      // with the turn, atomically: a retry after any crash either finds both or neither
      if (req.idempotencyKey !== undefined) recordOutcome(sql, req.idempotencyKey, req, outcome);
    });
    live.view = delta.view;
    if (!attempt) live.recordBytes = compacted ? deltaBytes : live.recordBytes + deltaBytes;
    live.messages = messages;
    live.turns = turnIdx + 1;
    live.meta = { ...live.meta, tokens: live.seq.length, chunks: delta.view.nextSeq, last_active: now };
    // The turn is committed: figures that cannot be read now are read again at the next load.
    if (live.chain) live.groups = await live.chain.summary(live.turns).catch(() => live.groups);
    live.committed = cacheStats(live, sql);
    await host.storage.setAlarm(now + host.ttlMs());
    outcome.session.stats.cache = live.committed;
    return outcome;
  } catch (e) {
    if (attemptId !== undefined) await live.chain?.abandon(attemptId);
    await host.discardMemory();
    return clientGone ? goneFailure() : failureFrom(e, 'session turn');
  } finally {
    attemptDone?.();
  }
}

import { SequenceState } from '../../engine/caches.js';
import { defaultSchedule } from '../../engine/policy.js';
import { emptyView, encodeDelta, modelFingerprint, replayLog, StateFormatError } from '../../engine/state-codec.js';
import { replayTurn, replayTurns, type TurnRecord } from '../../engine/turns.js';
import { encodeChat } from '../../model/chat-prompt.js';
import type { Env } from '../env.js';
import { heldModel } from '../groups/parts.js';
import { cacheStats, type Live } from './live.js';
import { readSplit, sessionChain, tokensOfRecords, type Split } from './split.js';
import { SessionChainFailure, type SessionChain } from '../groups/session-chain.js';
import { clearTurns, insertTurn, readSession, readTurns, recordRecovery, writeChunks } from './store.js';

/**
 * Loading a session: replays the stored chunks. A chunk that is damaged, foreign (other model or
 * format) or missing is never served: the state is rebuilt by replaying the turn records (exactly
 * the same state) or, when those belong to another model, by re-prefilling the messages; then the
 * log is rewritten as one snapshot.
 */

const hex8 = (v: number) => (v >>> 0).toString(16).padStart(8, '0');

/**
 * The stored session, loaded (and recovered if need be); null when the object holds none.
 * `sessionObject` (the object's id) names the session's layer groups when its layers are split.
 */
export async function loadSession(
  storage: DurableObjectStorage,
  env: Env,
  sessionObject: string,
): Promise<Live | null> {
  const stored = readSession(storage.sql);
  if (!stored) return null;
  const split = readSplit(storage.sql);
  if (split.groups > 1) return loadSplitSession(storage, env, sessionObject, split, stored);
  const { meta, messages, turns, chunks, recordBytes } = stored;
  const model = await heldModel(env, 1);
  const fingerprint = modelFingerprint(model.manifest);
  const live: Live = {
    meta,
    model,
    fingerprint,
    seq: new SequenceState(model.config),
    view: emptyView(),
    messages,
    recordBytes,
    turns,
    source: 'records',
    committed: null,
  };
  try {
    if (meta.fingerprint !== fingerprint)
      throw new StateFormatError(
        'foreign_model',
        `the session was stored for model ${meta.model} (${hex8(meta.fingerprint)}), this is ${model.manifest.name} (${hex8(fingerprint)})`,
      );
    if (chunks.length !== meta.chunks)
      throw new StateFormatError('out_of_order', `${chunks.length} chunks stored, ${meta.chunks} expected`);
    const r = replayLog(model.config, chunks, fingerprint);
    if (r.seq.length !== meta.tokens)
      throw new StateFormatError('malformed', `the log rebuilds ${r.seq.length} tokens, ${meta.tokens} expected`);
    live.seq = r.seq;
    live.view = r.view;
  } catch (e) {
    if (!(e instanceof StateFormatError)) throw e;
    await rebuild(storage, live, e);
  }
  live.committed = cacheStats(live, storage.sql);
  return live;
}

/**
 * A session whose layers are split: the tokens come from the turn records; every group loads its
 * own committed state (dropping what a turn that never committed left, groups/group-store.ts) when
 * asked for its figures here. A group log that cannot be trusted is rebuilt as an unsplit
 * session's is (rebuild), through the groups.
 */
async function loadSplitSession(
  storage: DurableObjectStorage,
  env: Env,
  sessionObject: string,
  split: Split,
  stored: NonNullable<ReturnType<typeof readSession>>,
): Promise<Live> {
  const { meta, messages, turns } = stored;
  const model = await heldModel(env, split.groups);
  const fingerprint = modelFingerprint(model.manifest);
  if (meta.fingerprint !== fingerprint)
    throw new StateFormatError(
      'foreign_model',
      `the split session was stored for model ${meta.model} (${hex8(meta.fingerprint)}), this is ${model.manifest.name} (${hex8(fingerprint)})`,
    );
  const records = readTurns(storage.sql).map((r) => r.record);
  const chain = sessionChain(env, sessionObject, split, model.config);
  const live: Live = {
    meta,
    model,
    fingerprint,
    seq: tokensOfRecords(model.config, records),
    view: emptyView(),
    messages,
    recordBytes: 0,
    turns,
    source: 'records',
    committed: null,
    chain,
  };
  try {
    live.groups = await chain.summary(turns);
    if (live.groups.tokens !== live.seq.length)
      throw new StateFormatError(
        'malformed',
        `the layer groups hold ${live.groups.tokens} tokens, the turn records ${live.seq.length}`,
      );
  } catch (e) {
    // A group's log that cannot be trusted (damaged, foreign, lost): rebuilt like a session's own.
    if (!(e instanceof StateFormatError || e instanceof SessionChainFailure)) throw e;
    await rebuild(
      storage,
      live,
      e instanceof StateFormatError ? e : new StateFormatError('malformed', `a layer group's state: ${e.message}`),
    );
  }
  live.committed = cacheStats(live, storage.sql);
  return live;
}

/**
 * Recovers from a log that cannot be trusted: redoes the recorded turns (identical state) when
 * they were made with this model, else prefills the stored messages; then replaces the log with a
 * snapshot of the rebuilt state. Never serves from the bad log. A split session redoes them
 * through its groups, emptied first, as one attempt that they store as committed.
 */
async function rebuild(storage: DurableObjectStorage, live: Live, why: StateFormatError): Promise<void> {
  const { model, fingerprint, chain } = live;
  const sql = storage.sql;
  const rows = readTurns(sql);
  /** a fresh state, and how its steps run: here, or through the session's groups (emptied) */
  const fresh = async () => {
    if (!chain) return { seq: new SequenceState(model.config), attempt: undefined };
    await chain.erase();
    return { seq: chain.frontState(), attempt: chain.attempt(0) };
  };
  let seq: SequenceState | null = null;
  let attempt: ReturnType<SessionChain['attempt']> | undefined;
  let how = 'turn records';
  if (rows.every((r) => r.fingerprint === fingerprint)) {
    try {
      const f = await fresh();
      attempt = f.attempt;
      seq = await replayTurns(
        model,
        rows.map((r) => r.record),
        f.seq,
        attempt?.runner.runner,
      );
    } catch (e) {
      attempt?.done();
      console.warn('lazy-edge: session turn records could not be replayed; prefilling the messages instead:', e);
    }
  }
  let synthetic: TurnRecord | null = null;
  if (!seq) {
    how = 'messages';
    const f = await fresh();
    seq = f.seq;
    attempt = f.attempt;
    if (live.messages.length > 0) {
      const { prompt: target, question } = encodeChat(model.tokenizer, model.manifest.chatTemplate, live.messages);
      synthetic = {
        keep: 0,
        prompt: target,
        decoded: [],
        schedule: defaultSchedule(model.config.nLayers, question ? 'question' : 'text'),
        question,
      };
      await replayTurn(model, seq, synthetic, attempt?.runner.runner);
    }
  }
  // Split: the groups store the rebuilt state as the attempt of turn 0, which every later turn counts as committed.
  if (chain && attempt) {
    try {
      await chain.prepare(0, attempt.id);
    } finally {
      attempt.done();
    }
  }
  const delta = chain ? { chunks: [], view: emptyView() } : encodeDelta(seq, emptyView(), { fingerprint });
  const note = `${why.reason}: ${why.message}; rebuilt from ${how}`;
  console.warn(`lazy-edge: session ${live.meta.session_id}: stored state rejected (${note})`);
  storage.transactionSync(() => {
    writeChunks(sql, 0, delta.chunks, true);
    if (synthetic) {
      clearTurns(sql);
      insertTurn(sql, 0, synthetic, fingerprint);
    }
    recordRecovery(sql, {
      fingerprint,
      model: model.manifest.name,
      tokens: seq.length,
      chunks: delta.chunks.length,
      note,
    });
  });
  live.meta = {
    ...live.meta,
    fingerprint,
    model: model.manifest.name,
    tokens: seq.length,
    chunks: delta.chunks.length,
    recoveries: live.meta.recoveries + 1,
    last_recovery: note,
  };
  live.seq = seq;
  live.view = delta.view;
  live.recordBytes = delta.chunks.reduce((s, c) => s + c.byteLength, 0);
  if (synthetic) live.turns = 1;
  live.source = 'rebuilt';
  if (chain) live.groups = await chain.summary(live.turns);
}

import { DurableObject } from 'cloudflare:workers';
import { SequenceState } from '../engine/caches.js';
import type { FinishReason, GenerationStats } from '../engine/generate.js';
import type { LoadedModel } from '../engine/model.js';
import { defaultSchedule, type Schedule } from '../engine/policy.js';
import {
  emptyView,
  encodeDelta,
  FORMAT_VERSION,
  modelFingerprint,
  replayLog,
  snapshotBytes,
  StateFormatError,
  type StoredView,
} from '../engine/state-codec.js';
import { TraceRecorder } from '../engine/trace.js';
import { replayTurn, replayTurns, runTurn, type TurnRecord, type TurnStats } from '../engine/turns.js';
import { renderChat } from './chat-template.js';
import type { Env } from './env.js';
import { logFault, toApiError, type ErrorBody } from './errors.js';
import { planJob, yieldToEventLoop, type CommonOptions, type Job, type Usage } from './generation.js';
import { LogprobShaper, type ShapedLogprob } from './logprobs.js';
import { getModel } from './model-store.js';
import type { ChatMessage } from './schemas.js';
import { encodePrompt } from '../model/text-tokenizer.js';

/**
 * One chat session: a SQLite-backed Durable Object that owns the conversation's messages and its
 * engine state (tokens, per-token depth, KV cache, Aux Cache), and runs inference itself, so that a
 * turn computes only its new tokens and the ones LazyLLM revives.
 *
 * Storage (all in the object's SQLite database):
 *   session   one row: who owns it, the model fingerprint, token and chunk counts, timestamps
 *   messages  the conversation, in order
 *   turns     one row per turn: what it truncated to, the tokens it fed, its schedule (TurnRecord):
 *             replaying them redoes every step exactly
 *   chunks    the state log of src/engine/state-codec.ts: each turn appends the records of what it
 *             changed (never rewrites the cache), in chunks of at most 1 MiB (rows may hold 2 MB),
 *             each with format version, model fingerprint, sequence number and crc32
 *
 * Loading (in blockConcurrencyWhile) replays the chunks. A chunk that is damaged, foreign (other
 * model or format) or missing is never served: the state is rebuilt by replaying the turn records
 * (exactly the same state) or, when those belong to another model, by re-prefilling the messages;
 * then the log is rewritten as one snapshot. The log is also compacted into one snapshot when
 * truncations have left it more than twice the size of the live state.
 *
 * Concurrency: one turn at a time; a second request while a turn runs gets 409 `session_busy`.
 * Memory changes only inside a turn and storage only at its end, in one transaction; a turn that
 * fails (bad input, engine fault, client gone) leaves storage untouched and memory is reloaded from
 * it, so a rejected request leaves the session exactly as it was.
 */

export const SESSION_SCHEMA = [
  `CREATE TABLE IF NOT EXISTS session (
     id INTEGER PRIMARY KEY CHECK (id = 1),
     session_id TEXT NOT NULL,
     owner TEXT NOT NULL,
     model TEXT NOT NULL,
     fingerprint INTEGER NOT NULL,
     format INTEGER NOT NULL,
     created_at INTEGER NOT NULL,
     last_active INTEGER NOT NULL,
     tokens INTEGER NOT NULL,
     chunks INTEGER NOT NULL,
     recoveries INTEGER NOT NULL,
     last_recovery TEXT
   )`,
  `CREATE TABLE IF NOT EXISTS messages (idx INTEGER PRIMARY KEY, role TEXT NOT NULL, content TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS turns (
     idx INTEGER PRIMARY KEY,
     keep INTEGER NOT NULL,
     prompt BLOB NOT NULL,
     decoded BLOB NOT NULL,
     schedule TEXT NOT NULL,
     fingerprint INTEGER NOT NULL
   )`,
  `CREATE TABLE IF NOT EXISTS chunks (seq INTEGER PRIMARY KEY, bytes BLOB NOT NULL)`,
];

export const DEFAULT_SESSION_TTL_SECONDS = 86_400;
/** max_tokens of a session message when the client sets none (capped by the room left in the context). */
export const SESSION_DEFAULT_MAX_TOKENS = 128;

export interface StoredMessage {
  role: ChatMessage['role'];
  content: string;
}

export interface CacheStats {
  tokens: number;
  /** how many tokens stopped at each depth 0..nLayers */
  depth_histogram: number[];
  kv_entries: number;
  kv_bytes: number;
  aux_entries: number;
  aux_bytes: number;
  /** bytes of the stored state log, and its chunk count */
  record_bytes: number;
  record_chunks: number;
  /** the object's whole SQLite database (messages, turns, log, page overhead) */
  storage_bytes: number;
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

export type Failure = { ok: false; status: number; error: ErrorBody['error'] };
export type Result<T> = ({ ok: true } & T) | Failure;

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
}

/** `logprobs` (when the turn asked for them): those of the tokens released with this text. */
export type TurnEvent = { type: 'start' } | { type: 'text'; text: string; logprobs?: ShapedLogprob[] };
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
    stats: TurnStats & { delta_bytes: number; compacted: boolean; cache: CacheStats };
  };
}

interface Meta {
  session_id: string;
  owner: string;
  model: string;
  fingerprint: number;
  created_at: number;
  last_active: number;
  tokens: number;
  chunks: number;
  recoveries: number;
  last_recovery: string | null;
}

interface Live {
  meta: Meta;
  model: LoadedModel;
  fingerprint: number;
  seq: SequenceState;
  view: StoredView;
  messages: StoredMessage[];
  recordBytes: number;
  turns: number;
  source: CacheStats['state_source'];
  /** the statistics as of the last completed turn (or load): what GET reports while a turn runs */
  committed: CacheStats | null;
}

const fail = (status: number, message: string, code: string, param: string | null = null): Failure => ({
  ok: false,
  status,
  error: { message, type: status >= 500 ? 'server_error' : 'invalid_request_error', param, code },
});

const notFound = (id: string): Failure => fail(404, `No session '${id}' exists for this API key.`, 'session_not_found', 'session_id');
/** The turn was abandoned because its client went away; the HTTP layer writes nothing more. */
const goneFailure = (): Failure => fail(499, 'The client closed the stream; the turn was abandoned and nothing was stored.', 'client_gone');
const busy = (): Failure => fail(409, 'Another request is using this session; retry once it has finished.', 'session_busy');

function failure(e: unknown, where: string): Failure {
  const err = toApiError(e);
  logFault(err, e, where);
  return { ok: false, status: err.status, error: err.body().error };
}

const hex8 = (v: number) => (v >>> 0).toString(16).padStart(8, '0');
const u32Blob = (a: readonly number[]): ArrayBuffer => Uint32Array.from(a).buffer;
const blobU32 = (b: unknown): number[] => Array.from(new Uint32Array(b as ArrayBuffer));
const blobOf = (u: Uint8Array): ArrayBuffer => (u.byteOffset === 0 && u.byteLength === u.buffer.byteLength ? (u.buffer as ArrayBuffer) : (u.slice().buffer as ArrayBuffer));

function messageText(m: ChatMessage): string {
  return typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join('');
}

export function sessionTtlSeconds(env: Env): number {
  const raw = env.SESSION_TTL_SECONDS;
  if (raw === undefined || raw.trim() === '') return DEFAULT_SESSION_TTL_SECONDS;
  const s = Number(raw);
  if (!Number.isFinite(s) || s <= 0) throw new Error(`SESSION_TTL_SECONDS must be a number of seconds > 0, got "${raw}"`);
  return s;
}

export class ChatSession extends DurableObject<Env> {
  /** undefined until loaded; null when this object holds no session */
  private live: Live | null | undefined;
  /** a turn is running: memory may be mid-change and other requests are refused */
  private busy = false;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    ctx.blockConcurrencyWhile(async () => {
      this.live = await this.load();
    });
  }

  private get sql(): SqlStorage {
    return this.ctx.storage.sql;
  }

  // ---- loading and recovery ----

  private async load(): Promise<Live | null> {
    const hasTable = this.sql.exec(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'session'`).toArray().length > 0;
    if (!hasTable) return null;
    const row = this.sql.exec('SELECT * FROM session WHERE id = 1').toArray()[0];
    if (!row) return null;
    const meta = row as unknown as Meta;
    const model = await getModel(this.env);
    const fingerprint = modelFingerprint(model.manifest);
    const messages = this.sql.exec('SELECT role, content FROM messages ORDER BY idx').toArray() as unknown as StoredMessage[];
    const turns = (this.sql.exec('SELECT COUNT(*) AS n FROM turns').one().n as number) ?? 0;
    const rows = this.sql.exec('SELECT seq, bytes FROM chunks ORDER BY seq').toArray();
    const recordBytes = rows.reduce((s, r) => s + (r.bytes as ArrayBuffer).byteLength, 0);
    const live: Live = { meta, model, fingerprint, seq: new SequenceState(model.config), view: emptyView(), messages, recordBytes, turns, source: 'records', committed: null };
    try {
      if (meta.fingerprint !== fingerprint) throw new StateFormatError('foreign_model', `the session was stored for model ${meta.model} (${hex8(meta.fingerprint)}), this is ${model.manifest.name} (${hex8(fingerprint)})`);
      if (rows.length !== meta.chunks) throw new StateFormatError('out_of_order', `${rows.length} chunks stored, ${meta.chunks} expected`);
      const r = replayLog(model.config, rows.map((x) => new Uint8Array(x.bytes as ArrayBuffer)), fingerprint);
      if (r.seq.length !== meta.tokens) throw new StateFormatError('malformed', `the log rebuilds ${r.seq.length} tokens, ${meta.tokens} expected`);
      live.seq = r.seq;
      live.view = r.view;
    } catch (e) {
      if (!(e instanceof StateFormatError)) throw e;
      await this.rebuild(live, e);
    }
    live.committed = this.cacheStats(live);
    return live;
  }

  /**
   * Recovers from a log that cannot be trusted: redoes the recorded turns (identical state) when
   * they were made with this model, else prefills the stored messages; then replaces the log with a
   * snapshot of the rebuilt state. Never serves from the bad log.
   */
  private async rebuild(live: Live, why: StateFormatError): Promise<void> {
    const { model, fingerprint } = live;
    const rows = this.sql.exec('SELECT keep, prompt, decoded, schedule, fingerprint FROM turns ORDER BY idx').toArray();
    let seq: SequenceState | null = null;
    let how = 'turn records';
    if (rows.every((r) => r.fingerprint === fingerprint)) {
      const records: TurnRecord[] = rows.map((r) => ({
        keep: r.keep as number,
        prompt: blobU32(r.prompt),
        decoded: blobU32(r.decoded),
        schedule: JSON.parse(r.schedule as string) as Schedule | null,
      }));
      try {
        seq = await replayTurns(model, records);
      } catch (e) {
        console.warn('lazy-edge: session turn records could not be replayed; prefilling the messages instead:', e);
      }
    }
    let synthetic: TurnRecord | null = null;
    if (!seq) {
      how = 'messages';
      seq = new SequenceState(model.config);
      if (live.messages.length > 0) {
        const target = encodePrompt(model.tokenizer, renderChat(model.manifest.chatTemplate, live.messages));
        synthetic = { keep: 0, prompt: target, decoded: [], schedule: defaultSchedule(model.config.nLayers) };
        await replayTurn(model, seq, synthetic);
      }
    }
    const delta = encodeDelta(seq, emptyView(), { fingerprint });
    const note = `${why.reason}: ${why.message}; rebuilt from ${how}`;
    console.warn(`lazy-edge: session ${live.meta.session_id}: stored state rejected (${note})`);
    this.ctx.storage.transactionSync(() => {
      this.sql.exec('DELETE FROM chunks');
      delta.chunks.forEach((c, k) => this.sql.exec('INSERT INTO chunks (seq, bytes) VALUES (?, ?)', k, blobOf(c)));
      if (synthetic) {
        this.sql.exec('DELETE FROM turns');
        this.insertTurn(0, synthetic, fingerprint);
      }
      this.sql.exec(
        'UPDATE session SET fingerprint = ?, model = ?, format = ?, tokens = ?, chunks = ?, recoveries = recoveries + 1, last_recovery = ? WHERE id = 1',
        fingerprint,
        model.manifest.name,
        FORMAT_VERSION,
        seq.length,
        delta.chunks.length,
        note,
      );
    });
    live.meta = { ...live.meta, fingerprint, model: model.manifest.name, tokens: seq.length, chunks: delta.chunks.length, recoveries: live.meta.recoveries + 1, last_recovery: note };
    live.seq = seq;
    live.view = delta.view;
    live.recordBytes = delta.chunks.reduce((s, c) => s + c.byteLength, 0);
    if (synthetic) live.turns = 1;
    live.source = 'rebuilt';
  }

  private insertTurn(idx: number, r: TurnRecord, fingerprint: number): void {
    this.sql.exec(
      'INSERT INTO turns (idx, keep, prompt, decoded, schedule, fingerprint) VALUES (?, ?, ?, ?, ?, ?)',
      idx,
      r.keep,
      u32Blob(r.prompt),
      u32Blob(r.decoded),
      JSON.stringify(r.schedule),
      fingerprint,
    );
  }

  // ---- helpers ----

  private ttlMs(): number {
    return sessionTtlSeconds(this.env) * 1000;
  }

  private cacheStats(live: Live): CacheStats {
    const { seq } = live;
    return {
      tokens: seq.length,
      depth_histogram: seq.depthHistogram(),
      kv_entries: seq.kvEntries(),
      kv_bytes: seq.kvBytes(),
      aux_entries: seq.aux.size,
      aux_bytes: seq.aux.bytes,
      record_bytes: live.recordBytes,
      record_chunks: live.view.nextSeq,
      storage_bytes: this.sql.databaseSize,
      turns: live.turns,
      state_source: live.source,
      recoveries: live.meta.recoveries,
      last_recovery: live.meta.last_recovery,
    };
  }

  private info(live: Live): SessionInfo {
    const ttl = this.ttlMs();
    return {
      id: live.meta.session_id,
      model: live.meta.model,
      created: Math.floor(live.meta.created_at / 1000),
      last_active: Math.floor(live.meta.last_active / 1000),
      expires_at: Math.floor((live.meta.last_active + ttl) / 1000),
      ttl_seconds: ttl / 1000,
      messages: live.messages.map((m) => ({ ...m })),
      stats: this.busy && live.committed ? live.committed : this.cacheStats(live),
    };
  }

  /** Marks activity now and moves the expiry alarm. */
  private async touch(live: Live): Promise<void> {
    const now = Date.now();
    live.meta.last_active = now;
    this.sql.exec('UPDATE session SET last_active = ? WHERE id = 1', now);
    await this.ctx.storage.setAlarm(now + this.ttlMs());
  }

  /** The loaded state; loads again if an earlier load failed (the constructor's, or one after a failed turn). */
  private async ensure(): Promise<Live | null> {
    if (this.live === undefined) await this.ctx.blockConcurrencyWhile(async () => {
      if (this.live === undefined) this.live = await this.load();
    });
    return this.live ?? null;
  }

  private async owned(owner: string, id?: string): Promise<Live | Failure> {
    const live = await this.ensure();
    if (!live || live.meta.owner !== owner || (id !== undefined && live.meta.session_id !== id)) return notFound(id ?? '');
    return live;
  }

  // ---- RPC ----

  /** Creates the session held by this object; `messages` (e.g. a system message) start the conversation. */
  async create(init: { id: string; owner: string; messages?: ChatMessage[] }): Promise<Result<{ session: SessionInfo }>> {
    try {
      if (await this.ensure()) return fail(409, `Session '${init.id}' already exists.`, 'session_exists');
      if (this.busy) return busy();
      this.busy = true;
      const model = await getModel(this.env);
      const fingerprint = modelFingerprint(model.manifest);
      const now = Date.now();
      const messages = (init.messages ?? []).map((m) => ({ role: m.role, content: messageText(m) }));
      // A conversation that leaves no room for a reply would make every turn fail until the TTL.
      if (messages.length > 0) {
        const ctx = model.config.seqLen;
        const n = encodePrompt(model.tokenizer, renderChat(model.manifest.chatTemplate, messages)).length;
        if (n + 1 > ctx) {
          return fail(
            400,
            `This model's maximum context length is ${ctx} tokens. However, the initial messages are ${n} tokens, leaving no room for a reply. Please reduce the length of the messages.`,
            'context_length_exceeded',
            'messages',
          );
        }
      }
      const meta: Meta = {
        session_id: init.id,
        owner: init.owner,
        model: model.manifest.name,
        fingerprint,
        created_at: now,
        last_active: now,
        tokens: 0,
        chunks: 0,
        recoveries: 0,
        last_recovery: null,
      };
      this.ctx.storage.transactionSync(() => {
        for (const s of SESSION_SCHEMA) this.sql.exec(s);
        this.sql.exec(
          'INSERT INTO session (id, session_id, owner, model, fingerprint, format, created_at, last_active, tokens, chunks, recoveries) VALUES (1, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0)',
          meta.session_id,
          meta.owner,
          meta.model,
          fingerprint,
          FORMAT_VERSION,
          now,
          now,
        );
        messages.forEach((m, k) => this.sql.exec('INSERT INTO messages (idx, role, content) VALUES (?, ?, ?)', k, m.role, m.content));
      });
      await this.ctx.storage.setAlarm(now + this.ttlMs());
      const live: Live = { meta, model, fingerprint, seq: new SequenceState(model.config), view: emptyView(), messages, recordBytes: 0, turns: 0, source: 'new', committed: null };
      live.committed = this.cacheStats(live);
      this.live = live;
      return { ok: true, session: this.info(live) };
    } catch (e) {
      return failure(e, 'session create');
    } finally {
      this.busy = false;
    }
  }

  /** The conversation and cache statistics; reading counts as activity. */
  async get(owner: string, id: string): Promise<Result<{ session: SessionInfo }>> {
    const live = await this.owned(owner, id);
    if ('ok' in live) return live;
    if (!this.busy) await this.touch(live);
    return { ok: true, session: this.info(live) };
  }

  /** Deletes everything the session stored. Refused while a turn runs. */
  async remove(owner: string, id: string): Promise<Result<{ id: string }>> {
    const live = await this.owned(owner, id);
    if ('ok' in live) return live;
    if (this.busy) return busy();
    await this.destroy();
    return { ok: true, id };
  }

  private async destroy(): Promise<void> {
    this.live = null;
    await this.ctx.storage.deleteAlarm();
    await this.ctx.storage.deleteAll();
  }

  /** Deletes the session once it has been idle for the TTL (SESSION_TTL_SECONDS). */
  override async alarm(): Promise<void> {
    if (!(await this.ensure())) {
      await this.ctx.storage.deleteAll();
      return;
    }
    if (this.busy) {
      await this.ctx.storage.setAlarm(Date.now() + this.ttlMs());
      return;
    }
    const last = this.sql.exec('SELECT last_active FROM session WHERE id = 1').one().last_active as number;
    const due = last + this.ttlMs();
    if (Date.now() >= due) await this.destroy();
    else await this.ctx.storage.setAlarm(due);
  }

  /**
   * One chat turn. Everything that can be refused is checked before the state is touched; with
   * `onEvent`, a "start" event marks the point after which the reply streams as "text" events.
   */
  async turn(id: string, req: TurnRequest, onEvent?: TurnListener): Promise<Result<TurnOutcome>> {
    const live = await this.owned(req.owner, id);
    if ('ok' in live) return live;
    if (this.busy) return busy();
    this.busy = true;
    try {
      return await this.runTurn(live, req, onEvent);
    } finally {
      this.busy = false;
    }
  }

  private async runTurn(live: Live, req: TurnRequest, onEvent?: TurnListener): Promise<Result<TurnOutcome>> {
    const startedAt = performance.now();
    const { model } = live;
    const incoming = req.messages.map((m) => ({ role: m.role, content: messageText(m) }));
    const conversation = req.mode === 'append' ? [...live.messages, ...incoming] : incoming;
    let job: Job;
    let target: number[];
    try {
      target = encodePrompt(model.tokenizer, renderChat(model.manifest.chatTemplate, conversation));
      const room = model.config.seqLen - target.length;
      job = planJob(this.env, startedAt, model, target, req.options, {
        promptParam: 'messages',
        maxTokensParam: req.maxTokensParam,
        maxTokens: req.maxTokens,
        defaultMaxTokens: req.mode === 'append' ? Math.max(1, Math.min(SESSION_DEFAULT_MAX_TOKENS, room)) : Math.max(1, room),
        logprobs: req.logprobs,
      });
    } catch (e) {
      return failure(e, 'session turn (validation)');
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
    try {
      const tracer = job.trace ? new TraceRecorder(model, live.seq) : undefined;
      const shaper = job.logprobs === null ? undefined : new LogprobShaper(model.tokenizer, target[target.length - 1]);
      const turn = await runTurn(model, live.seq, target, {
        ...(job.logprobs === null ? {} : { logprobs: { top: job.logprobs } }),
        trace: tracer?.hook,
        maxTokens: job.maxTokens,
        sampler: job.sampler,
        stop: job.stop,
        schedule: job.schedule,
        deadline: job.deadline,
        // Streamed: each piece goes out as it is released. Before every token, streamed or not, a
        // zero-delay timer lets other requests take their turn (a concurrent message or DELETE is
        // refused with 409 at once rather than queued behind this turn; /healthz answers), and lets
        // the deployed clock move for the request budget. A hung-up stream stops here, within a token.
        onText: onEvent ? (text, lps) => emit(shaper ? { type: 'text', text, logprobs: shaper.shape(lps) } : { type: 'text', text }) : undefined,
        beforeStep: async () => {
          await yieldToEventLoop();
          if (clientGone) throw new Error('client gone');
        },
      });
      const r = turn.result;
      const reply: StoredMessage = { role: 'assistant', content: r.text };
      const messages = [...conversation, reply];

      let delta = encodeDelta(live.seq, live.view, { fingerprint: live.fingerprint });
      let deltaBytes = delta.chunks.reduce((s, c) => s + c.byteLength, 0);
      // Truncations leave dead records behind; once the log is over twice the live state, rewrite it once.
      const compacted = live.recordBytes + deltaBytes > 2 * snapshotBytes(live.seq) + 65_536;
      if (compacted) {
        delta = encodeDelta(live.seq, emptyView(), { fingerprint: live.fingerprint });
        deltaBytes = delta.chunks.reduce((s, c) => s + c.byteLength, 0);
      }
      const turnIdx = live.turns;
      const now = Date.now();
      this.ctx.storage.transactionSync(() => {
        if (compacted) this.sql.exec('DELETE FROM chunks');
        const first = compacted ? 0 : live.view.nextSeq;
        delta.chunks.forEach((c, k) => this.sql.exec('INSERT INTO chunks (seq, bytes) VALUES (?, ?)', first + k, blobOf(c)));
        this.insertTurn(turnIdx, turn.record, live.fingerprint);
        if (req.mode === 'append') {
          messages.slice(live.messages.length).forEach((m, k) => this.sql.exec('INSERT INTO messages (idx, role, content) VALUES (?, ?, ?)', live.messages.length + k, m.role, m.content));
        } else {
          this.sql.exec('DELETE FROM messages');
          messages.forEach((m, k) => this.sql.exec('INSERT INTO messages (idx, role, content) VALUES (?, ?, ?)', k, m.role, m.content));
        }
        this.sql.exec('UPDATE session SET tokens = ?, chunks = ?, last_active = ? WHERE id = 1', live.seq.length, delta.view.nextSeq, now);
      });
      live.view = delta.view;
      live.recordBytes = compacted ? deltaBytes : live.recordBytes + deltaBytes;
      live.messages = messages;
      live.turns = turnIdx + 1;
      live.meta = { ...live.meta, tokens: live.seq.length, chunks: delta.view.nextSeq, last_active: now };
      live.committed = this.cacheStats(live);
      await this.ctx.storage.setAlarm(now + this.ttlMs());

      const completion = r.tokens.length;
      return {
        ok: true,
        text: r.text,
        finishReason: r.finishReason,
        usage: {
          prompt_tokens: target.length,
          completion_tokens: completion,
          total_tokens: target.length + completion,
          prompt_tokens_details: { cached_tokens: turn.stats.reused_tokens },
        },
        stats: tracer ? { ...r.stats, trace: tracer.result() } : r.stats,
        ...(shaper && !onEvent ? { logprobs: shaper.shape(r.logprobs) } : {}),
        session: {
          id: live.meta.session_id,
          turn: turnIdx,
          stats: { ...turn.stats, delta_bytes: deltaBytes, compacted, cache: live.committed },
        },
      };
    } catch (e) {
      try {
        this.live = await this.load();
      } catch (reload) {
        console.error('lazy-edge: session reload after a failed turn failed:', reload);
        this.live = undefined;
      }
      return clientGone ? goneFailure() : failure(e, 'session turn');
    }
  }
}


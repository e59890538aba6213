import { DurableObject } from 'cloudflare:workers';
import { SequenceState } from '../../engine/caches.js';
import { emptyView, modelFingerprint } from '../../engine/state-codec.js';
import { encodePrompt } from '../../model/text-tokenizer.js';
import { messageText, renderChat } from '../../model/chat-prompt.js';
import { configOf } from '../config.js';
import type { Env } from '../env.js';
import { failureOf, failureFrom, type Failure } from '../faults.js';
import { heldModel } from '../groups/parts.js';
import type { ChatMessage } from '../../model/chat-prompt.js';
import { cacheStats, type Live } from './live.js';
import { loadSession } from './recovery.js';
import { insertSession, readLastActive, setLastActive, type Meta } from './store.js';
import { sessionChain, writeSplit, type Split } from './split.js';
import { replayStored } from './idempotency.js';
import { playTurn, type TurnHost } from './turn.js';
import type { Result, SessionInfo, TurnListener, TurnOutcome, TurnRequest } from './types.js';

export type {
  CacheStats,
  Failure,
  Result,
  SessionInfo,
  StoredMessage,
  TurnEvent,
  TurnListener,
  TurnOutcome,
  TurnRequest,
} from './types.js';
export { SESSION_SCHEMA } from './store.js';
export { SESSION_DEFAULT_MAX_TOKENS } from './turn.js';

/**
 * One chat session: a SQLite-backed Durable Object that owns the conversation's messages and its
 * engine state (tokens, per-token depth, KV cache, Aux Cache), and runs inference itself, so that a
 * turn computes only its new tokens and the ones LazyLLM revives. This file is the RPC surface;
 * session/store.ts holds the schema and rows, session/recovery.ts loading and recovery,
 * session/turn.ts a turn.
 *
 * Every RPC method answers with a Result (a Failure for anything refused or failed); none throws.
 * The log is compacted into one snapshot when truncations have left it more than twice the size of
 * the live state.
 *
 * Concurrency: one turn at a time; a second request while a turn runs gets 409 `session_busy`.
 * Memory changes only inside a turn and storage only at its end, in one transaction; a turn that
 * fails (bad input, engine fault, client gone) leaves storage untouched and memory is reloaded from
 * it, so a rejected request leaves the session exactly as it was.
 */

const notFound = (id: string): Failure =>
  failureOf(404, `No session '${id}' exists for this API key.`, 'session_not_found', 'session_id');
const busy = (): Failure =>
  failureOf(409, 'Another request is using this session; retry once it has finished.', 'session_busy');

export class ChatSession extends DurableObject<Env> {
  /** undefined until loaded; null when this object holds no session */
  private live: Live | null | undefined;
  /** a turn (or a create) is running: memory may be mid-change and other requests are refused */
  private busy = false;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    ctx.blockConcurrencyWhile(async () => {
      this.live = await loadSession(this.ctx.storage, this.env, this.ctx.id.toString());
    });
  }

  private ttlMs(): number {
    return configOf(this.env).sessionTtlMs;
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
      stats: this.busy && live.committed ? live.committed : cacheStats(live, this.ctx.storage.sql),
    };
  }

  /** Marks activity now and moves the expiry alarm. */
  private async touch(live: Live): Promise<void> {
    const now = Date.now();
    live.meta.last_active = now;
    setLastActive(this.ctx.storage.sql, now);
    await this.ctx.storage.setAlarm(now + this.ttlMs());
  }

  /** The loaded state; loads again if an earlier load failed (the constructor's, or one after a failed turn). */
  private async ensure(): Promise<Live | null> {
    if (this.live === undefined)
      await this.ctx.blockConcurrencyWhile(async () => {
        if (this.live === undefined) this.live = await loadSession(this.ctx.storage, this.env, this.ctx.id.toString());
      });
    return this.live ?? null;
  }

  private async owned(owner: string, id?: string): Promise<Live | Failure> {
    const live = await this.ensure();
    if (!live || live.meta.owner !== owner || (id !== undefined && live.meta.session_id !== id))
      return notFound(id ?? '');
    return live;
  }

  // ---- RPC ----

  /**
   * Creates the session held by this object; `messages` (e.g. a system message) start the
   * conversation. `split.groups` > 1 splits its layers across that many LayerGroup objects, and its
   * classifier across `split.heads` more, and sends its dense turns through them in steps of
   * `split.stepTokens` (LAYER_GROUPS, HEAD_GROUPS and PREFILL_STEP_TOKENS of the Worker that
   * created it; kept for the session's life).
   */
  async create(init: {
    id: string;
    owner: string;
    messages?: ChatMessage[];
    split?: Split;
  }): Promise<Result<{ session: SessionInfo }>> {
    try {
      if (await this.ensure()) return failureOf(409, `Session '${init.id}' already exists.`, 'session_exists');
    } catch (e) {
      return failureFrom(e, 'session create');
    }
    // Only the call that set the flag clears it: a refusal must not free a session another call holds.
    if (this.busy) return busy();
    this.busy = true;
    try {
      return await this.createNew(init);
    } catch (e) {
      return failureFrom(e, 'session create');
    } finally {
      this.busy = false;
    }
  }

  private async createNew(init: {
    id: string;
    owner: string;
    messages?: ChatMessage[];
    split?: Split;
  }): Promise<Result<{ session: SessionInfo }>> {
    const split = init.split ?? { groups: 1, heads: 0 };
    const groups = split.groups;
    const model = await heldModel(this.env, groups);
    const fingerprint = modelFingerprint(model.manifest);
    const now = Date.now();
    const messages = (init.messages ?? []).map((m) => ({ role: m.role, content: messageText(m) }));
    // A conversation that leaves no room for a reply would make every turn fail until the TTL.
    if (messages.length > 0) {
      const ctx = model.config.seqLen;
      const n = encodePrompt(model.tokenizer, renderChat(model.manifest.chatTemplate, messages)).length;
      if (n + 1 > ctx) {
        return failureOf(
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
    const chain = groups > 1 ? sessionChain(this.env, this.ctx.id.toString(), split, model.config) : undefined;
    // Groups left by an earlier session of this object (deleted, expired) must start empty too.
    const summary = chain ? (await chain.erase(), await chain.summary(0)) : undefined;
    this.ctx.storage.transactionSync(() => {
      insertSession(this.ctx.storage.sql, meta, messages);
      if (chain) writeSplit(this.ctx.storage.sql, split);
    });
    await this.ctx.storage.setAlarm(now + this.ttlMs());
    const seq = chain ? chain.frontState() : new SequenceState(model.config);
    const live: Live = {
      meta,
      model,
      fingerprint,
      seq,
      view: emptyView(),
      messages,
      recordBytes: 0,
      turns: 0,
      source: 'new',
      committed: null,
      chain,
      groups: summary,
    };
    live.committed = cacheStats(live, this.ctx.storage.sql);
    this.live = live;
    return { ok: true, session: this.info(live) };
  }

  /** The conversation and cache statistics; reading counts as activity. */
  async get(owner: string, id: string): Promise<Result<{ session: SessionInfo }>> {
    try {
      const live = await this.owned(owner, id);
      if ('ok' in live) return live;
      if (!this.busy) await this.touch(live);
      return { ok: true, session: this.info(live) };
    } catch (e) {
      return failureFrom(e, 'session get');
    }
  }

  /** Deletes everything the session stored. Refused while a turn runs. */
  async remove(owner: string, id: string): Promise<Result<{ id: string }>> {
    try {
      const live = await this.owned(owner, id);
      if ('ok' in live) return live;
      if (this.busy) return busy();
      await this.destroy();
      return { ok: true, id };
    } catch (e) {
      return failureFrom(e, 'session delete');
    }
  }

  private async destroy(): Promise<void> {
    const chain = this.live?.chain;
    this.live = null;
    await chain?.erase();
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
    const due = readLastActive(this.ctx.storage.sql) + this.ttlMs();
    if (Date.now() >= due) await this.destroy();
    else await this.ctx.storage.setAlarm(due);
  }

  /** One chat turn (session/turn.ts); with `onEvent` it streams. */
  async turn(id: string, req: TurnRequest, onEvent?: TurnListener): Promise<Result<TurnOutcome>> {
    let live: Live | Failure;
    try {
      live = await this.owned(req.owner, id);
    } catch (e) {
      return failureFrom(e, 'session turn');
    }
    if ('ok' in live) return live;
    if (this.busy) return busy();
    this.busy = true;
    try {
      const stored = await replayStored(this.ctx.storage.sql, req, live.committed, onEvent);
      if (stored) return stored;
      return await playTurn(this.host(), live, req, onEvent);
    } finally {
      this.busy = false;
    }
  }

  private host(): TurnHost {
    return {
      storage: this.ctx.storage,
      env: this.env,
      ttlMs: () => this.ttlMs(),
      discardMemory: async () => {
        try {
          this.live = await loadSession(this.ctx.storage, this.env, this.ctx.id.toString());
        } catch (reload) {
          console.error('lazy-edge: session reload after a failed turn failed:', reload);
          this.live = undefined;
        }
      },
    };
  }
}

import { DurableObject } from 'cloudflare:workers';
import type { SequenceState } from '../../engine/caches.js';
import { EngineError } from '../../engine/errors.js';
import { groupState } from '../../engine/layer-group.js';
import type { ModelPart, PartSpec } from '../../engine/model.js';
import { runPart } from '../../engine/step.js';
import { headPartLogits } from '../../engine/vocab-parts.js';
import { wasmHeapBytes } from '../../runtime/onnx-runtime.js';
import type { Env } from '../env.js';
import { failureFrom, failureOf } from '../faults.js';
import { encodeDelta, modelFingerprint, type StoredView } from '../../engine/state-codec.js';
import { placeSplit } from '../../engine/layer-group.js';
import { commonPrefix } from '../../engine/turns.js';
import { fromWire, lastTokenFrontier, toWire, wireBytes } from './frontier.js';
import { groupStub } from './stub.js';
import { groupFingerprint, loadGroupLog, writeGroupChunks } from './group-store.js';
import { groupModel, manifestOf } from './parts.js';
import { hostedFigures, hostTenant, refuseGrowth, type Tenant } from './isolate-room.js';
import type {
  GroupAddress,
  GroupStepCall,
  GroupStepReply,
  GroupSummary,
  IsolateProbe,
  LayerTraceEntry,
  Result,
  SessionGroupAddress,
  SessionStepCall,
} from './types.js';

/** A session group's state in memory: committed through `turn` turns, or inside attempt `attempt` at turn `turn`. */
interface SessionMemory {
  seq: SequenceState;
  view: StoredView;
  fingerprint: number;
  turn: number;
  attempt: string | null;
  recordBytes: number;
}

/** One step over a group's layers (the engine's runPart), its output made ready to cross RPC. */
async function runGroupStep(
  part: ModelPart,
  seq: SequenceState,
  call: GroupStepCall | SessionStepCall,
): Promise<GroupStepReply> {
  const trace: LayerTraceEntry[] | undefined = call.trace ? [] : undefined;
  const input = 'frontier' in call.input ? { frontier: fromWire(call.input.frontier) } : call.input;
  const { output, stats } = await runPart(part, seq, input, {
    schedule: call.schedule,
    trace: trace && ((layer, queries, revived) => trace.push({ layer, queries, revived })),
  });
  const last = call.group === call.groups - 1;
  // The classifier objects need only the last token's hidden state, not every computed token's.
  const ready =
    'logits' in output
      ? output
      : { frontier: toWire(last ? lastTokenFrontier(output.frontier, part.config.dim) : output.frontier) };
  return { output: ready, stats: [stats], ...(trace ? { trace } : {}), handed_bytes: 0 };
}

/**
 * Hands this group's frontier to the next layer group of the chain (`call.next`), which does the
 * same, and answers what comes back: the last group's output, with this group's figures first.
 * The frontier thus crosses each boundary once, group to group, instead of going back through
 * the caller (half the RPC hops per step). A failure below is answered as it is.
 */
async function handOn<C extends GroupStepCall | SessionStepCall>(
  env: Env,
  call: C,
  own: GroupStepReply,
  send: (next: DurableObjectStub<LayerGroup>, call: C) => Promise<Result<GroupStepReply>>,
): Promise<Result<GroupStepReply>> {
  const [name, ...rest] = call.next ?? [];
  if (name === undefined || !('frontier' in own.output)) return { ok: true, ...own };
  const frontier = own.output.frontier;
  let below: Result<GroupStepReply>;
  try {
    await call.progress?.();
    below = await send(groupStub(env, call.group + 1, name), {
      ...call,
      group: call.group + 1,
      next: rest,
      input: { frontier },
    });
  } catch (e) {
    return failureFrom(e, `layer group ${call.group} handing on to layer group ${call.group + 1}`);
  }
  if (!below.ok) return below;
  return {
    ok: true,
    output: below.output,
    stats: [...own.stats, ...below.stats],
    ...(own.trace ? { trace: [...own.trace, ...(below.trace ?? [])] } : {}),
    handed_bytes: wireBytes(frontier) + below.handed_bytes,
  };
}

/** This object's pieces in its split (the engine's placement rule). */
function objectPart(
  nLayers: number,
  headParts: number,
  a: Pick<GroupAddress, 'groups' | 'group' | 'heads' | 'frontEmbeds'>,
): PartSpec {
  const parts = placeSplit(nLayers, headParts, a.groups, a.heads ?? 0, a.frontEmbeds ?? false);
  const part = parts[a.group];
  if (!Number.isInteger(a.group) || !part)
    throw new EngineError(`object ${a.group} of ${a.groups} + ${a.heads ?? 0} does not exist`, 'internal');
  return part;
}

/** The sequence length after a step with this input: its new tokens appended at `start`. */
function lengthAfter(input: GroupStepCall['input']): number {
  return 'tokens' in input ? input.start + input.tokens.length : input.frontier.start + input.frontier.newTokens.length;
}

/** Drawn once per isolate, at the first probe (the global scope may not draw random values): tells whether two objects run in the same one. */
let isolateId: string | null = null;

/**
 * A lease nobody has used for this long is abandoned (its front Worker died or its client left
 * without a release) and may be taken over. Longer than any one step runs.
 */
export const LEASE_IDLE_MS = 180_000;

/**
 * One group of decoder layers, as a Durable Object: it holds its layers' weights (once per isolate,
 * parts.ts) and, for the request it serves, its layers' KV rows and Aux Cache entries. Every RPC
 * method answers a Result; none throws.
 *
 * State belongs to one lease at a time (a stateless request). The chain's first group is its lock:
 * `acquire` there is refused while another live lease holds it; the later groups are taken by
 * whoever holds the first, and drop the state of any lease before. A step under any other lease
 * than the holder's is refused, so two requests never mix their states.
 */
export class LayerGroup extends DurableObject<Env> implements Tenant {
  private lease: { id: string; at: number } | null = null;
  private state: SequenceState | null = null;
  /**
   * The split prefix cache's entry: the state a finished stateless request left here (released with
   * a byte limit, PREFIX_CACHE_MB), taken by the next acquire whose prompt shares its prefix. The one
   * state this object holds between requests; dropped first when the isolate is short of room.
   */
  private kept: SequenceState | null = null;
  private stepping = false;
  /** when this instance started (an eviction or restart starts a new one, with no lease) */
  private readonly born = Date.now();

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    hostTenant(this);
  }

  /** The states this instance holds (a request's, a session's): what it adds to its isolate's memory (isolate-room.ts). */
  heldStates(): SequenceState[] {
    return [this.state, this.kept, this.session?.seq ?? null].filter((s): s is SequenceState => s !== null);
  }

  /** Drops the state kept for reuse, if any (isolate-room.ts: room is made before a step is refused). */
  dropKept(): boolean {
    const had = this.kept !== null;
    this.kept = null;
    return had;
  }

  private async part(a: Pick<GroupAddress, 'groups' | 'group' | 'heads' | 'frontEmbeds'>): Promise<ModelPart> {
    const m = await manifestOf(this.env);
    return groupModel(this.env, objectPart(m.config.nLayers, m.files.head.length, a));
  }

  /** A classifier object: the logits of its vocabulary rows for the last token's hidden state [dim]. Stateless. */
  async head(
    a: Pick<GroupAddress, 'groups' | 'group' | 'heads'>,
    hidden: Float32Array,
  ): Promise<Result<{ rows: { start: number; logits: Float32Array }[] }>> {
    try {
      const part = await this.part(a);
      if (part.head.length === 0) throw new EngineError(`object ${a.group} holds no classifier rows`, 'internal');
      return { ok: true, rows: await headPartLogits(part.head, hidden, part.config.dim) };
    } catch (e) {
      return failureFrom(e, 'classifier object');
    }
  }

  private held(lease: string): boolean {
    return this.lease?.id === lease;
  }

  /** Takes the object for `a.lease` with an empty state (`exclusive`: refused while another live lease holds it). */
  async acquire(
    a: GroupAddress & { exclusive: boolean; prefix?: number[] },
  ): Promise<Result<{ loaded: boolean; held: number }>> {
    try {
      const now = Date.now();
      if (
        a.exclusive &&
        this.lease &&
        !this.held(a.lease) &&
        (this.handing > 0 || now - this.lease.at < LEASE_IDLE_MS)
      ) {
        return failureOf(503, 'This layer-group chain is serving another request.', 'chain_busy');
      }
      if (this.stepping) return failureOf(503, 'This layer group is in the middle of a step.', 'chain_busy');
      const part = await this.part(a);
      this.lease = { id: a.lease, at: now };
      // `prefix`: the request's prompt, for the kept state (its first steps truncate it to where they start).
      const kept = this.kept;
      this.kept = null;
      const held = kept && a.prefix ? commonPrefix(kept.tokens, a.prefix) : 0;
      this.state = held > 0 ? kept : groupState(part.config, part.layerRange);
      return { ok: true, loaded: true, held };
    } catch (e) {
      return failureFrom(e, 'layer group acquire');
    }
  }

  /** Runs the step over this group's layers for the lease holding it, then hands it on down the chain. */
  async step(call: GroupStepCall): Promise<Result<GroupStepReply>> {
    const own = await this.ownStep(call);
    if (!own.ok) return own;
    this.handing++;
    try {
      return await handOn(this.env, call, own, (next, c) => next.step(c));
    } finally {
      this.handing--;
      // the lease was in use all along: its idle time counts from the chain's answer
      if (this.held(call.lease)) this.lease = { id: call.lease, at: Date.now() };
    }
  }

  /** Steps handed on down the chain and not yet answered: the lease is in use meanwhile. */
  private handing = 0;

  private async ownStep(call: GroupStepCall): Promise<Result<GroupStepReply>> {
    if (!this.held(call.lease) || !this.state) {
      const why = this.lease
        ? `held by another request since ${Date.now() - this.lease.at} ms`
        : `holding no request, started ${Date.now() - this.born} ms ago`;
      console.warn(`layer group ${call.group}/${call.groups}: step refused (lease_lost): ${why}`);
      return failureOf(
        409,
        `Layer group ${call.group} of ${call.groups} is no longer held by this request (${why}).`,
        'lease_lost',
      );
    }
    if (this.stepping) return failureOf(409, 'A step is already running on this layer group.', 'chain_busy');
    this.stepping = true;
    try {
      const part = await this.part(call);
      const full = refuseGrowth(part, this.state, lengthAfter(call.input), call.schedule !== null);
      if (full) return full;
      // A state reused from the prefix cache holds more than the step's common prefix: the rest goes.
      const start = 'tokens' in call.input ? call.input.start : call.input.frontier.start;
      if (this.state.length > start) this.state.truncate(start);
      const reply = await runGroupStep(part, this.state, call);
      this.lease = { id: call.lease, at: Date.now() };
      return { ok: true, ...reply };
    } catch (e) {
      // A failed step leaves the state partly changed: nobody may continue from it.
      this.state = null;
      this.lease = null;
      return failureFrom(e, 'layer group step');
    } finally {
      this.stepping = false;
    }
  }

  /**
   * Frees the object if `lease` still holds it. A finished request's state of at most `keepUpTo`
   * bytes (0: none) is kept for the next request sharing its prefix; anything else is dropped.
   */
  async release(lease: string, keepUpTo = 0): Promise<void> {
    if (!this.held(lease) || this.stepping) return;
    const s = this.state;
    this.lease = null;
    this.state = null;
    this.kept = s && s.length > 0 && s.bytes <= keepUpTo ? s : null;
  }

  // ---- a session's group (named from the session and the group index; its state is stored) ----

  private session: SessionMemory | null = null;

  /** The committed state at `a.committed` turns, or the attempt `a.attempt` in progress; reloaded from storage otherwise. */
  private async sessionMemory(
    a: SessionGroupAddress,
    continuing: boolean,
  ): Promise<{ part: ModelPart; mem: SessionMemory }> {
    const part = await this.part(a);
    const mem = this.session;
    if (
      mem &&
      (continuing
        ? mem.attempt === a.attempt || (mem.attempt === null && mem.turn === a.committed)
        : mem.attempt === null && mem.turn === a.committed)
    )
      return { part, mem };
    // Not loaded, evicted, or left mid-turn by an attempt that did not commit: rebuild from storage.
    this.session = null;
    const { start, end } = part.layerRange;
    const fingerprint = groupFingerprint(modelFingerprint(part.manifest), start, end, a.groups);
    const seq = groupState(part.config, part.layerRange);
    // A log that cannot be trusted is answered as a failure (the session rebuilds it); thrown out of
    // blockConcurrencyWhile it would reset this object and break the call instead.
    const loaded = await this.ctx.blockConcurrencyWhile(async () => {
      try {
        return this.ctx.storage.transactionSync(() =>
          loadGroupLog(this.ctx.storage.sql, seq, a.committed, fingerprint, a.group === 0),
        );
      } catch (e) {
        return e instanceof Error ? e : new Error(String(e));
      }
    });
    if (loaded instanceof Error) throw loaded;
    const { view, bytes } = loaded;
    this.session = { seq, view, fingerprint, turn: a.committed, attempt: null, recordBytes: bytes };
    return { part, mem: this.session };
  }

  /** One step of a session turn's attempt over this group's layers, handed on down the chain. */
  async turnStep(call: SessionStepCall): Promise<Result<GroupStepReply>> {
    const own = await this.ownTurnStep(call);
    return own.ok ? handOn(this.env, call, own, (next, c) => next.turnStep(c)) : own;
  }

  /** The first step of an attempt starts from the committed state. */
  private async ownTurnStep(call: SessionStepCall): Promise<Result<GroupStepReply>> {
    if (this.stepping) return failureOf(409, 'A step is already running on this layer group.', 'chain_busy');
    this.stepping = true;
    try {
      // Later steps continue the attempt this object is in; if it lost it (evicted mid-turn), the turn fails.
      if (call.step > 0 && this.session?.attempt !== call.attempt)
        return failureOf(
          409,
          'This layer group lost the turn in progress (it was restarted); the turn is abandoned.',
          'turn_lost',
        );
      const { part, mem } = await this.sessionMemory(call, true);
      const full = refuseGrowth(part, mem.seq, lengthAfter(call.input), call.schedule !== null);
      if (full) {
        this.session = null; // the isolate is short of room: the committed state waits in storage
        return full;
      }
      mem.attempt = call.attempt;
      // The session keeps the longest common prefix of the conversation: a step may start earlier than the state ends.
      const start = 'tokens' in call.input ? call.input.start : call.input.frontier.start;
      if (mem.seq.length > start) mem.seq.truncate(start);
      return { ok: true, ...(await runGroupStep(part, mem.seq, call)) };
    } catch (e) {
      this.session = null; // reloaded from storage by the next call
      return failureFrom(e, 'session layer group step');
    } finally {
      this.stepping = false;
    }
  }

  /**
   * Stores what attempt `a.attempt` changed, tagged with turn `a.committed`: pending until the
   * session commits that turn (group-store.ts). The state in memory then counts as committed at
   * `a.committed + 1`; if the session does not commit, the next call reloads without it.
   */
  async prepare(a: SessionGroupAddress): Promise<Result<{ delta_bytes: number }>> {
    try {
      const mem = this.session;
      if (!mem || mem.attempt !== a.attempt || mem.turn !== a.committed)
        return failureOf(409, 'This layer group no longer holds the turn being committed.', 'turn_lost');
      const delta = encodeDelta(mem.seq, mem.view, { fingerprint: mem.fingerprint });
      this.ctx.storage.transactionSync(() =>
        writeGroupChunks(this.ctx.storage.sql, mem.view.nextSeq, a.committed, delta.chunks),
      );
      const bytes = delta.chunks.reduce((t, c) => t + c.byteLength, 0);
      mem.view = delta.view;
      mem.recordBytes += bytes;
      mem.attempt = null;
      mem.turn = a.committed + 1;
      return { ok: true, delta_bytes: bytes };
    } catch (e) {
      this.session = null;
      return failureFrom(e, 'session layer group prepare');
    }
  }

  /** The committed state's figures. */
  async summary(a: Omit<SessionGroupAddress, 'attempt'>): Promise<Result<{ summary: GroupSummary }>> {
    try {
      const { mem } = await this.sessionMemory({ ...a, attempt: '' }, false);
      const s = mem.seq;
      return {
        ok: true,
        summary: {
          tokens: s.length,
          depth: s.depth.slice(0, s.length),
          kv_entries: s.kvEntries(),
          kv_bytes: s.kvBytes(),
          aux_entries: s.aux.size,
          aux_bytes: s.aux.bytes,
          record_bytes: mem.recordBytes,
          record_chunks: mem.view.nextSeq,
          storage_bytes: this.ctx.storage.sql.databaseSize,
        },
      };
    } catch (e) {
      return failureFrom(e, 'session layer group summary');
    }
  }

  /** Drops attempt `attempt` from memory (its turn failed): the committed state is reloaded from storage when next needed. */
  async abandon(attempt: string): Promise<void> {
    if (this.session?.attempt === attempt && !this.stepping) this.session = null;
  }

  /** Deletes everything this group stored (the session was deleted or expired). */
  async erase(): Promise<void> {
    this.session = null;
    await this.ctx.storage.deleteAll();
  }

  // ---- held while a chain serves a request (chain.ts holdObjects) ----

  /** The hold() calls in flight, by id: each ends at unhold(id) or when its time is up. */
  private readonly holds = new Map<string, () => void>();

  /**
   * A call that stays in flight until `unhold(id)` or `ms`, whichever comes first. An object with a
   * call in flight is never evicted for inactivity, so while the front holds every object of a
   * chain none loses its state between steps, however long the other objects compute. (Pings do not
   * do that in local workerd: the runtime evicts an object 10 s after its last call ends, measured
   * on an event-loop clock that does not advance while the in-process RPCs of a chain keep the loop
   * busy, so a 13 s prefill evicted every idle object at once; docs/LAYER-GROUPS.md.)
   */
  async hold(id: string, ms: number): Promise<void> {
    this.holds.get(id)?.();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => end(), ms);
      const end = () => {
        clearTimeout(timer);
        if (this.holds.get(id) === end) this.holds.delete(id);
        resolve();
      };
      this.holds.set(id, end);
    });
  }

  /** Ends the hold `id` (if still in flight). */
  async unhold(id: string): Promise<void> {
    this.holds.get(id)?.();
  }

  /**
   * One file of the served model from this Worker's own assets, for GET /v1/model-files on the front
   * (which holds only its own shards in the topology): only a file the manifest names under this
   * sha256, else null; the bytes are streamed, never loaded as a model.
   */
  async modelFile(file: string, sha256: string): Promise<ReadableStream<Uint8Array> | null> {
    const m = await manifestOf(this.env);
    const named = [m.tokenizer, ...m.files.embed, ...m.files.layers, ...m.files.head].some(
      (e) => e.file === file && e.sha256 === sha256,
    );
    if (!named) return null;
    const res = await this.env.ASSETS.fetch(`https://assets.local/${m.name}/${file}`);
    if (!res.ok || !res.body) {
      await res.body?.cancel();
      return null;
    }
    return res.body;
  }

  /** Which isolate this object runs in, its wasm heap, what its state holds and how many holds are in flight: for tests and measurements. */
  async probe(): Promise<IsolateProbe> {
    const s = this.state ?? this.session?.seq ?? null;
    const hosted = hostedFigures();
    return {
      isolate: (isolateId ??= crypto.randomUUID()),
      wasm_heap_bytes: wasmHeapBytes(),
      tokens: s?.length ?? 0,
      kv_bytes: s?.kvBytes() ?? 0,
      aux_bytes: s?.aux.bytes ?? 0,
      holds: this.holds.size,
      hosted_states: hosted.states,
      hosted_bytes: hosted.bytes,
    };
  }
}

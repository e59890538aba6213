/**
 * A chat session's layer groups, seen from its ChatSession object: objects named from the session
 * object's id and the group index, each storing its own layers' state (group-store.ts). A turn is
 * one attempt: its steps run through the groups, then every group stores its changes as pending
 * for the turn (prepare), then the session commits the turn record; a turn that fails anywhere
 * before that commit leaves every group as it was (they drop the attempt when next called).
 */
import { SequenceState } from '../../engine/caches.js';
import type { ModelConfig } from '../../model/config.js';
import type { Env } from '../env.js';
import { ChainRunner, connect, holdObjects, type FrontEmbed, type GroupStub } from './chain.js';
import { sumFigures, type CacheFigures, type GroupSummary, type SessionGroupAddress } from './types.js';

/** The instance names of the objects of the session whose ChatSession object has id `sessionObject`. */
export function sessionNames(sessionObject: string, groups: number, heads = 0): string[] {
  // The split is part of the name: a session made under another split never meets these objects.
  const split = heads ? `${groups}+${heads}` : String(groups);
  return Array.from({ length: groups + heads }, (_, g) => `session/${sessionObject}/${split}/${g}`);
}

/** The objects of that session (sessionNames). */
export function sessionGroups(env: Env, sessionObject: string, groups: number, heads = 0): GroupStub[] {
  return connect(env, sessionNames(sessionObject, groups, heads));
}

export class SessionChainFailure extends Error {}

function ok<T extends object>(r: ({ ok: true } & T) | { ok: false; error: { message: string } }, what: string): T {
  if (!r.ok) throw new SessionChainFailure(`${what}: ${(r as { error: { message: string } }).error.message}`);
  return r as T;
}

/** The groups' committed figures summed; a token's depth is the sum of its depths in the groups. */
export interface ChainSummary extends CacheFigures {
  /** [tokens] each token's depth in the model */
  depth: Uint8Array;
  depth_histogram: number[];
}

/**
 * Stubs are made afresh for every attempt and call: a stub to an object that was reset (evicted,
 * restarted) stays broken, while a new one reaches the object as it restores itself.
 */
export class SessionChain {
  /** `names`: the instance names of the layer groups, then of the `heads` classifier objects (sessionNames). */
  constructor(
    private readonly env: Env,
    private readonly names: readonly string[],
    readonly groups: number,
    readonly config: ModelConfig,
    readonly heads = 0,
    /** the session object embeds (EMBED_IN_FRONT): group 0 holds no embedding */
    private readonly embed?: FrontEmbed,
    /** a dense step of more tokens goes through the groups as steps of at most this many (PREFILL_STEP_TOKENS; 0: never cut) */
    private readonly stepTokens = 0,
  ) {}

  private connect(): GroupStub[] {
    return connect(this.env, this.names);
  }

  private layerStubs(): GroupStub[] {
    return this.connect().slice(0, this.groups);
  }

  /** The session's state on its side: tokens only, since the caches live in the groups. */
  frontState(): SequenceState {
    return new SequenceState({ ...this.config, nLayers: 0 });
  }

  private address(g: number, committed: number, attempt: string): SessionGroupAddress {
    return {
      groups: this.groups,
      group: g,
      heads: this.heads,
      frontEmbeds: this.embed !== undefined,
      committed,
      attempt,
    };
  }

  /** A runner for one attempt at turn `committed`; `done()` ends its holds on the objects (chain.ts holdObjects) once the attempt is over. */
  attempt(committed: number): { runner: ChainRunner; id: string; done: () => void } {
    const id = crypto.randomUUID();
    const stubs = this.connect();
    let runner: ChainRunner | null = null;
    const done = holdObjects(stubs, () => runner?.lastUse ?? Date.now());
    let step = 0;
    const G = this.groups;
    const next = this.names.slice(1, G);
    runner = new ChainRunner(
      G,
      this.config,
      (input, schedule, trace, progress) =>
        stubs[0].turnStep({
          ...this.address(0, committed, id),
          step: step++,
          input,
          schedule,
          trace,
          next,
          ...(progress && { progress }),
        }),
      undefined,
      this.heads,
      (k, hidden) => stubs[G + k].head({ groups: G, group: G + k, heads: this.heads }, hidden),
      this.embed,
      this.stepTokens,
    );
    return { runner, id, done };
  }

  /** Every group stores the attempt's changes as pending for turn `committed`; throws if any cannot. Returns the bytes each stored. */
  async prepare(committed: number, attempt: string): Promise<number[]> {
    const r = await Promise.all(this.layerStubs().map((s, g) => s.prepare(this.address(g, committed, attempt))));
    return r.map((x, g) => ok<{ delta_bytes: number }>(x, `layer group ${g} could not store the turn`).delta_bytes);
  }

  /** The groups' committed state at `committed` turns, summed. */
  async summary(committed: number): Promise<ChainSummary> {
    const parts: GroupSummary[] = (
      await Promise.all(
        this.layerStubs().map((s, g) => {
          // The whole address (EMBED_IN_FRONT included): it says which pieces the group loads.
          const { attempt: _, ...address } = this.address(g, committed, '');
          return s.summary(address);
        }),
      )
    ).map((r, g) => ok<{ summary: GroupSummary }>(r, `layer group ${g}`).summary);
    const n = parts[0].tokens;
    const depth = new Uint8Array(n); // [tokens]
    for (const p of parts) for (let i = 0; i < n; i++) depth[i] += p.depth[i];
    const hist = new Array(this.config.nLayers + 1).fill(0);
    for (const d of depth) hist[d]++;
    return { ...sumFigures(parts), depth, depth_histogram: hist };
  }

  /**
   * Every group drops a failed attempt from memory at once, so that its half-grown state stops
   * counting against its isolate (isolate-room.ts). Best effort: a group not reached drops it when next called.
   */
  async abandon(attempt: string): Promise<void> {
    await Promise.allSettled(this.layerStubs().map((s) => s.abandon(attempt)));
  }

  async erase(): Promise<void> {
    await Promise.all(this.layerStubs().map((s) => s.erase()));
  }
}

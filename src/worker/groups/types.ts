/** What crosses RPC between the front Worker (chain.ts) and a LayerGroup object. */
import type { Ranking, Schedule } from '../../engine/policy.js';
import type { LayerStats } from '../../engine/step.js';
import type { WireFrontier } from './frontier.js';
import type { Failure, Result } from '../faults.js';

export type { Failure };

export type { Result };

/** Who the object is: group `group` of `groups`, serving one lease (a stateless request, or a session's turn). */
export interface GroupAddress {
  groups: number;
  group: number;
  /** classifier objects after the layer groups (placeSplit in src/engine/layer-group.ts); 0 or absent: the last layer group applies the classifier */
  heads?: number;
  /** the front embeds the tokens (EMBED_IN_FRONT): group 0 holds no embedding and receives a frontier */
  frontEmbeds?: boolean;
  lease: string;
}

/**
 * The instance names of the layer groups after this one in its chain, in order: the group hands
 * its frontier to the first of them itself (the step goes down the chain, group to group, and the
 * chain's answer comes back up), so a frontier crosses each boundary once instead of going back
 * through the caller. Empty or absent: this is the chain's last layer group.
 */
export interface HandOn {
  next?: string[];
  /**
   * The caller's keep-alive hook for a streamed prefill (a function stub back to the front): each
   * group calls it once its own layers are done, before it hands on, so the client hears from the
   * front while the later groups compute. Timers in the front cannot do that in local workerd,
   * where every Worker shares one thread and the front's timers wait until the chain step is over.
   */
  progress?: () => Promise<void>;
}

export interface GroupStepCall extends GroupAddress, HandOn {
  /** the first group embeds the step's new tokens (appended after `start`); every other group receives the frontier */
  input: { tokens: number[]; start: number; ranking?: Ranking } | { frontier: WireFrontier };
  schedule: Schedule | null;
  /** answer each layer's queries and revivals (the engine's LayerTrace, replayed by the caller) */
  trace?: boolean;
}

/** One layer's LayerTrace call. */
export interface LayerTraceEntry {
  layer: number;
  queries: Int32Array;
  revived: Int32Array;
}

/**
 * The answer of a step from the group called down to the chain's last layer group: the last one's
 * output (the logits of the step's last token, or the frontier leaving the last layer when
 * classifier objects apply the head), and every group's figures, in layer order.
 */
export interface GroupStepReply {
  output: { frontier: WireFrontier } | { logits: Float32Array };
  /** one per layer group from the one called to the last */
  stats: LayerStats[];
  trace?: LayerTraceEntry[];
  /** wire bytes of the frontiers handed from group to group below the one called */
  handed_bytes: number;
}

export interface IsolateProbe {
  /** a random id drawn once per isolate (module scope): equal ids mean one isolate */
  isolate: string;
  /** onnxruntime's wasm heap in this isolate now (bytes), null before the first session */
  wasm_heap_bytes: number | null;
  /** what this object's state holds */
  tokens: number;
  kv_bytes: number;
  aux_bytes: number;
  /** hold() calls in flight (a chain serving a request holds each of its objects once) */
  holds: number;
  /** every state the instances hosted by this isolate hold, and their bytes (isolate-room.ts) */
  hosted_states: number;
  hosted_bytes: number;
}

/** A session's group: which session turn it serves. */
export interface SessionGroupAddress {
  groups: number;
  group: number;
  heads?: number;
  frontEmbeds?: boolean;
  /** the session's committed turn count: chunks of later turns are not committed (group-store.ts) */
  committed: number;
  /** one attempt at turn `committed`: a group continues only the attempt it is in, else it reloads */
  attempt: string;
}

export interface SessionStepCall extends SessionGroupAddress, HandOn {
  /** the step's index within the attempt: only step 0 may start from the committed state */
  step: number;
  input: GroupStepCall['input'];
  schedule: GroupStepCall['schedule'];
  trace?: boolean;
}

/** What a state holds and stores: one record for a group, a session's chain of groups (summed) and a session. */
export interface CacheFigures {
  tokens: number;
  kv_entries: number;
  kv_bytes: number;
  aux_entries: number;
  aux_bytes: number;
  /** bytes of the stored state log, and its chunk count */
  record_bytes: number;
  record_chunks: number;
  /** the object's whole SQLite database */
  storage_bytes: number;
}

/** The figures of several states side by side (a chain's groups): their sums, over the same tokens. */
export function sumFigures(parts: readonly CacheFigures[]): CacheFigures {
  const sum = (k: Exclude<keyof CacheFigures, 'tokens'>) => parts.reduce((t, p) => t + p[k], 0);
  return {
    tokens: parts[0]?.tokens ?? 0,
    kv_entries: sum('kv_entries'),
    kv_bytes: sum('kv_bytes'),
    aux_entries: sum('aux_entries'),
    aux_bytes: sum('aux_bytes'),
    record_bytes: sum('record_bytes'),
    record_chunks: sum('record_chunks'),
    storage_bytes: sum('storage_bytes'),
  };
}

/** A session group's committed state, for the session's statistics. */
export interface GroupSummary extends CacheFigures {
  /** [tokens] each token's depth within this group's layers */
  depth: Uint8Array;
}

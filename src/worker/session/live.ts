import type { SequenceState } from '../../engine/caches.js';
import type { LoadedModel } from '../../engine/model.js';
import type { StoredView } from '../../engine/state-codec.js';
import type { ChainSummary, SessionChain } from '../groups/session-chain.js';
import { sumFigures, type CacheFigures } from '../groups/types.js';
import type { Meta } from './store.js';
import type { CacheStats, StoredMessage } from './types.js';

/** A loaded session: its stored rows as last committed, and the engine state they rebuild. */
export interface Live {
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
  /** with split layers (session/split.ts): the session's groups, and their committed figures; `seq` then holds only the tokens */
  chain?: SessionChain;
  groups?: ChainSummary;
}

export function cacheStats(live: Live, sql: SqlStorage): CacheStats {
  const { seq } = live;
  const g = live.groups;
  const session = {
    turns: live.turns,
    state_source: live.source,
    recoveries: live.meta.recoveries,
    last_recovery: live.meta.last_recovery,
  };
  // The object's own state and log; split, its state holds only the tokens (no layers, so no KV or
  // Aux entries) and the groups add theirs.
  const own: CacheFigures = {
    tokens: seq.length,
    kv_entries: seq.kvEntries(),
    kv_bytes: seq.kvBytes(),
    aux_entries: seq.aux.size,
    aux_bytes: seq.aux.bytes,
    record_bytes: live.recordBytes,
    record_chunks: live.view.nextSeq,
    storage_bytes: sql.databaseSize,
  };
  const figures = g ? sumFigures([own, g]) : own;
  return { ...figures, depth_histogram: g ? g.depth_histogram : seq.depthHistogram(), ...session };
}

/**
 * Sessions whose layers are split across LayerGroup objects (LAYER_GROUPS > 1 when the session was
 * created): the ChatSession object keeps the conversation, the turn records and the tokens; each
 * group keeps its layers' KV rows and Aux Cache entries in its own storage (groups/group-store.ts).
 * The split a session was made with is stored with it, so that changing LAYER_GROUPS later does
 * not reassign its state.
 */
import { SequenceState } from '../../engine/caches.js';
import type { TurnRecord } from '../../engine/turns.js';
import type { ModelConfig } from '../../model/config.js';
import type { Env } from '../env.js';
import { frontEmbed } from '../groups/chain.js';
import { configOf } from '../config.js';
import { SessionChain, sessionNames } from '../groups/session-chain.js';

// step_tokens may be NULL: sessions stored before it existed (they step as the object's PREFILL_STEP_TOKENS says).
const SCHEMA = `CREATE TABLE IF NOT EXISTS layer_groups (id INTEGER PRIMARY KEY CHECK (id = 1), groups INTEGER NOT NULL, heads INTEGER NOT NULL, step_tokens INTEGER)`;

/** How a session is split. */
export interface Split {
  /** layer groups; 1 = the session object holds its own caches */
  groups: number;
  /** classifier objects after them */
  heads: number;
  /**
   * a dense turn's new tokens go through the groups in steps of at most this many (0: one step):
   * PREFILL_STEP_TOKENS of the Worker that created the session, kept with its split for its life;
   * absent (a session stored before), the ChatSession object's own PREFILL_STEP_TOKENS
   */
  stepTokens?: number;
}

/** The session's split as stored; 1 group (its own caches) when none is. */
export function readSplit(sql: SqlStorage): Split {
  const has =
    sql.exec(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'layer_groups'`).toArray().length > 0;
  // SELECT *: a table written before step_tokens existed has no such column
  const row = has ? sql.exec('SELECT * FROM layer_groups WHERE id = 1').toArray()[0] : undefined;
  if (!row) return { groups: 1, heads: 0 };
  const step = row.step_tokens;
  return {
    groups: row.groups as number,
    heads: row.heads as number,
    ...(typeof step === 'number' ? { stepTokens: step } : {}),
  };
}

export function writeSplit(sql: SqlStorage, s: Split): void {
  sql.exec(SCHEMA);
  sql.exec(
    'INSERT OR REPLACE INTO layer_groups (id, groups, heads, step_tokens) VALUES (1, ?, ?, ?)',
    s.groups,
    s.heads,
    s.stepTokens ?? null,
  );
}

/** The tokens a session holds after its recorded turns, in a state without layers (the groups hold the caches). */
export function tokensOfRecords(config: ModelConfig, records: readonly TurnRecord[]): SequenceState {
  const seq = new SequenceState({ ...config, nLayers: 0 });
  for (const r of records) {
    seq.truncate(r.keep);
    seq.append(r.prompt);
    seq.append(r.decoded);
  }
  return seq;
}

/** The chain of a session's groups, named from its ChatSession object's id. */
export function sessionChain(env: Env, sessionObject: string, split: Split, config: ModelConfig): SessionChain {
  return new SessionChain(
    env,
    sessionNames(sessionObject, split.groups, split.heads),
    split.groups,
    config,
    split.heads,
    frontEmbed(env),
    split.stepTokens ?? configOf(env).split.stepTokens,
  );
}

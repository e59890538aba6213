import type { Schedule } from '../../engine/policy.js';
import { FORMAT_VERSION } from '../../engine/state-codec.js';
import type { TurnRecord } from '../../engine/turns.js';
import type { StoredMessage } from './types.js';

/**
 * A chat session's SQLite schema and its rows, all in the Durable Object's own database:
 *   session   one row: who owns it, the model fingerprint, token and chunk counts, timestamps
 *   messages  the conversation, in order
 *   turns     one row per turn: what it truncated to, the tokens it fed, its schedule (TurnRecord):
 *             replaying them redoes every step exactly
 *   turn_questions  the question span a turn ranked by (signal:query), for the turns that had one
 *             (a table of its own, so that databases written before it need no migration)
 *   chunks    the state log of src/engine/state-codec.ts: each turn appends the records of what it
 *             changed (never rewrites the cache), in chunks of at most 1 MiB (rows may hold 2 MB),
 *             each with format version, model fingerprint, sequence number and crc32
 * Writers that change more than one row run inside the caller's `transactionSync`.
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
  `CREATE TABLE IF NOT EXISTS turn_questions (idx INTEGER PRIMARY KEY, q_from INTEGER NOT NULL, q_to INTEGER NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS chunks (seq INTEGER PRIMARY KEY, bytes BLOB NOT NULL)`,
];

/** The session row. */
export interface Meta {
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

const u32Blob = (a: readonly number[]): ArrayBuffer => Uint32Array.from(a).buffer;
const blobU32 = (b: unknown): number[] => Array.from(new Uint32Array(b as ArrayBuffer));
const blobOf = (u: Uint8Array): ArrayBuffer =>
  u.byteOffset === 0 && u.byteLength === u.buffer.byteLength
    ? (u.buffer as ArrayBuffer)
    : (u.slice().buffer as ArrayBuffer);

/** Everything stored, as read at load; null when this object holds no session. */
export interface StoredSession {
  meta: Meta;
  messages: StoredMessage[];
  turns: number;
  chunks: Uint8Array[];
  recordBytes: number;
}

export function readSession(sql: SqlStorage): StoredSession | null {
  const hasTable =
    sql.exec(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'session'`).toArray().length > 0;
  if (!hasTable) return null;
  const row = sql.exec('SELECT * FROM session WHERE id = 1').toArray()[0];
  if (!row) return null;
  const messages = sql.exec('SELECT role, content FROM messages ORDER BY idx').toArray() as unknown as StoredMessage[];
  const turns = (sql.exec('SELECT COUNT(*) AS n FROM turns').one().n as number) ?? 0;
  const rows = sql.exec('SELECT seq, bytes FROM chunks ORDER BY seq').toArray();
  const recordBytes = rows.reduce((s, r) => s + (r.bytes as ArrayBuffer).byteLength, 0);
  return {
    meta: row as unknown as Meta,
    messages,
    turns,
    chunks: rows.map((x) => new Uint8Array(x.bytes as ArrayBuffer)),
    recordBytes,
  };
}

/** The turn records in order, each with the fingerprint of the model that made it. */
export function readTurns(sql: SqlStorage): { record: TurnRecord; fingerprint: number }[] {
  return sql
    .exec(
      'SELECT keep, prompt, decoded, schedule, fingerprint, q_from, q_to FROM turns LEFT JOIN turn_questions USING (idx) ORDER BY idx',
    )
    .toArray()
    .map((r) => ({
      record: {
        keep: r.keep as number,
        prompt: blobU32(r.prompt),
        decoded: blobU32(r.decoded),
        schedule: JSON.parse(r.schedule as string) as Schedule | null,
        question: r.q_from === null ? null : { from: r.q_from as number, to: r.q_to as number },
      },
      fingerprint: r.fingerprint as number,
    }));
}

export function clearTurns(sql: SqlStorage): void {
  sql.exec('DELETE FROM turns');
  sql.exec('DELETE FROM turn_questions');
}

export function insertTurn(sql: SqlStorage, idx: number, r: TurnRecord, fingerprint: number): void {
  sql.exec(
    'INSERT INTO turns (idx, keep, prompt, decoded, schedule, fingerprint) VALUES (?, ?, ?, ?, ?, ?)',
    idx,
    r.keep,
    u32Blob(r.prompt),
    u32Blob(r.decoded),
    JSON.stringify(r.schedule),
    fingerprint,
  );
  if (r.question)
    sql.exec('INSERT INTO turn_questions (idx, q_from, q_to) VALUES (?, ?, ?)', idx, r.question.from, r.question.to);
}

/** Appends chunks to the log from sequence number `first`; with `replace`, the log is emptied first. */
export function writeChunks(sql: SqlStorage, first: number, chunks: readonly Uint8Array[], replace = false): void {
  if (replace) sql.exec('DELETE FROM chunks');
  chunks.forEach((c, k) => sql.exec('INSERT INTO chunks (seq, bytes) VALUES (?, ?)', first + k, blobOf(c)));
}

/** Appends messages from index `from`; with `replace`, the stored conversation is emptied first. */
export function writeMessages(
  sql: SqlStorage,
  from: number,
  messages: readonly StoredMessage[],
  replace = false,
): void {
  if (replace) sql.exec('DELETE FROM messages');
  messages.forEach((m, k) =>
    sql.exec('INSERT INTO messages (idx, role, content) VALUES (?, ?, ?)', from + k, m.role, m.content),
  );
}

export function insertSession(sql: SqlStorage, meta: Meta, messages: readonly StoredMessage[]): void {
  for (const s of SESSION_SCHEMA) sql.exec(s);
  sql.exec(
    'INSERT INTO session (id, session_id, owner, model, fingerprint, format, created_at, last_active, tokens, chunks, recoveries) VALUES (1, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0)',
    meta.session_id,
    meta.owner,
    meta.model,
    meta.fingerprint,
    FORMAT_VERSION,
    meta.created_at,
    meta.last_active,
  );
  writeMessages(sql, 0, messages);
}

/** After a recovery: the model the log now belongs to, its size, and the note. */
export function recordRecovery(
  sql: SqlStorage,
  m: { fingerprint: number; model: string; tokens: number; chunks: number; note: string },
): void {
  sql.exec(
    'UPDATE session SET fingerprint = ?, model = ?, format = ?, tokens = ?, chunks = ?, recoveries = recoveries + 1, last_recovery = ? WHERE id = 1',
    m.fingerprint,
    m.model,
    FORMAT_VERSION,
    m.tokens,
    m.chunks,
    m.note,
  );
}

export function updateCounts(sql: SqlStorage, tokens: number, chunks: number, lastActive: number): void {
  sql.exec('UPDATE session SET tokens = ?, chunks = ?, last_active = ? WHERE id = 1', tokens, chunks, lastActive);
}

export function setLastActive(sql: SqlStorage, now: number): void {
  sql.exec('UPDATE session SET last_active = ? WHERE id = 1', now);
}

export function readLastActive(sql: SqlStorage): number {
  return sql.exec('SELECT last_active FROM session WHERE id = 1').one().last_active as number;
}

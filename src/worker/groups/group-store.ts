/**
 * A session group's own storage (SQLite, in its LayerGroup object): the state log of its layers
 * (src/engine/state-codec.ts chunks, over the group's state as a model of its own layers), each
 * chunk tagged with the session turn that wrote it.
 *
 * A turn commits in every group or in none: each group writes its turn's chunks tagged with the
 * turn index T (prepare), then the session object commits its turn record, which makes T count.
 * Chunks tagged T or later are only pending until then: every call carries the session's committed
 * turn count, and a group that loads drops the chunks of turns not committed, so a failed or
 * abandoned turn leaves every group as it was.
 */
import { applyChunk, crc32, type StoredView, viewOf } from '../../engine/state-codec.js';
import type { SequenceState } from '../../engine/caches.js';
import { StateFormatError } from '../../engine/state-codec.js';

export const GROUP_SCHEMA = [
  `CREATE TABLE IF NOT EXISTS group_chunks (seq INTEGER PRIMARY KEY, turn INTEGER NOT NULL, bytes BLOB NOT NULL)`,
];

/** The model fingerprint of a group's chunks: the model's, its place in the split. */
export function groupFingerprint(modelFingerprint: number, start: number, end: number, groups: number): number {
  return crc32(new TextEncoder().encode(`${modelFingerprint}:${start}-${end}/${groups}`));
}

const blobOf = (u: Uint8Array): ArrayBuffer =>
  u.byteOffset === 0 && u.byteLength === u.buffer.byteLength
    ? (u.buffer as ArrayBuffer)
    : (u.slice().buffer as ArrayBuffer);

/**
 * Rebuilds the group's committed state: drops the chunks of turns >= committed (never committed),
 * then replays the rest in order onto `seq` (empty). Throws StateFormatError on a chunk it cannot trust.
 */
export function loadGroupLog(
  sql: SqlStorage,
  seq: SequenceState,
  committed: number,
  fingerprint: number,
  first: boolean,
): { view: StoredView; bytes: number } {
  for (const s of GROUP_SCHEMA) sql.exec(s);
  sql.exec('DELETE FROM group_chunks WHERE turn >= ?', committed);
  const rows = sql.exec('SELECT seq, bytes FROM group_chunks ORDER BY seq').toArray();
  let bytes = 0;
  rows.forEach((r, k) => {
    if (r.seq !== k) throw new StateFormatError('out_of_order', `group chunk ${r.seq} found where ${k} belongs`);
    const chunk = new Uint8Array(r.bytes as ArrayBuffer);
    bytes += chunk.byteLength;
    applyChunk(seq, chunk, { fingerprint, seq: k });
  });
  checkGroupInvariants(seq, first);
  return { view: viewOf(seq, rows.length), bytes };
}

/** Appends a turn's chunks, tagged with its turn index, from sequence number `first`. */
export function writeGroupChunks(sql: SqlStorage, first: number, turn: number, chunks: readonly Uint8Array[]): void {
  for (const s of GROUP_SCHEMA) sql.exec(s);
  chunks.forEach((c, k) =>
    sql.exec('INSERT INTO group_chunks (seq, turn, bytes) VALUES (?, ?, ?)', first + k, turn, blobOf(c)),
  );
}

/**
 * What a group's state satisfies (its depths count its own layers, 0..S): in the first group every
 * token went through its first layer; a token that stopped inside the group (0 < d < S) has its
 * Aux Cache entry here, and one that went through (d = S) has none; one at depth 0 of a later
 * group has one exactly when it stopped at that group's first layer.
 */
function checkGroupInvariants(seq: SequenceState, first: boolean): void {
  const S = seq.config.nLayers;
  for (let i = 0; i < seq.length; i++) {
    const d = seq.depth[i];
    const has = seq.aux.entries.has(i);
    if (first && d < 1) throw new StateFormatError('malformed', `token ${i} has depth ${d} in the first group`);
    if (d > 0 && d < S && !has)
      throw new StateFormatError('malformed', `token ${i} at depth ${d} lacks an Aux Cache entry`);
    if (d === S && has)
      throw new StateFormatError('malformed', `token ${i} went through the group but has an Aux Cache entry`);
  }
  for (const i of seq.aux.entries.keys())
    if (i >= seq.length)
      throw new StateFormatError('malformed', `Aux Cache entry for token ${i} beyond the ${seq.length} held`);
}

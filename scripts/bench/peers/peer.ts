/**
 * A benchmark row that runs outside the bench's own process (our engine in a child, llama.cpp in
 * Python, wllama in Chromium), driven one request at a time so that the bench can interleave rows
 * within each repetition.
 */

/** A prompt as token ids and as the text that tokenizes to exactly those ids (wllama takes text only). */
export interface PeerPrompt {
  ids: number[];
  text: string;
}

export interface PeerTrial {
  /** token ids in hand -> first new token, page/process clock */
  ttftMs: number;
  /** the same on the row's CPU clock (Infinity when the row is multi-threaded: then wall counts) */
  ttftCpuMs: number;
  /** `tokens.length` further greedy steps */
  decodeMs: number;
  decodeCpuMs: number;
  /** greedy ids: the first new token, then one per decode step */
  tokens: number[];
  /** the row's own count of prompt tokens it evaluated (must equal ids.length) */
  promptTokens: number;
  /** CPU seconds of the row's processes per wall second of the call (threads busy; < threads: it waited) */
  cpuPerWall?: number;
  /** the peer's own timers where it has them (wllama: llama-server's prompt_ms / predicted_ms) */
  own?: { ttftMs: number; decodeMs: number; decodeTokens: number };
}

export interface Peer {
  row: string;
  /** versions, build, threads: what the report says about the row */
  info: Record<string, unknown>;
  /** greedy completion: first token + `decode` steps; with `stop`, ends after a stop id (included) */
  run(prompt: PeerPrompt, decode: number, stop?: number[]): Promise<PeerTrial>;
  /** peak resident memory of the row's process so far, MB (null if unknown) */
  peakRssMb(): Promise<number | null>;
  close(): Promise<void>;
}

export type PeerStart = { ok: true; peer: Peer } | { ok: false; row: string; reason: string };

export function unavailable(row: string, reason: string): PeerStart {
  return { ok: false, row, reason };
}

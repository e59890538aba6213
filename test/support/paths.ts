import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseLlama2cCheckpoint, type Checkpoint } from '../../src/model/checkpoint.js';
import { Tokenizer } from '../../src/model/tokenizer.js';

// Shared assets live next to the checkout, not in it; resolve from this file so tests work from any cwd.
const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

export const SHARED_MODEL_DIR: string =
  process.env.LAZY_EDGE_MODEL_DIR ?? resolve(REPO_ROOT, '../shared/models/stories260K');

export const SHARED_DATA: string =
  process.env.LAZY_EDGE_DATA ?? resolve(REPO_ROOT, '../shared/data/tinystories-dev.txt');

export const STORIES260K_BIN = resolve(SHARED_MODEL_DIR, 'stories260K.bin');
export const TOK512_BIN = resolve(SHARED_MODEL_DIR, 'tok512.bin');
export const GREEDY_SAMPLE = resolve(SHARED_MODEL_DIR, 'greedy-sample.txt');

/** File contents as a plain Uint8Array; Buffer's differing slice() semantics stay out of src/. */
export function readBytes(path: string): Uint8Array {
  const buf = readFileSync(path);
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

export function loadStories260K(): { ck: Checkpoint; tok: Tokenizer } {
  const ck = parseLlama2cCheckpoint(readBytes(STORIES260K_BIN), STORIES260K_BIN);
  const tok = Tokenizer.fromLlama2c(readBytes(TOK512_BIN), ck.config.vocabSize, TOK512_BIN);
  return { ck, tok };
}

export function devStories(): string[] {
  return readFileSync(SHARED_DATA, 'utf8')
    .split('\n')
    .filter((line) => line.length > 0);
}

/** The greedy sample is the text before the first ``` fence in greedy-sample.txt. */
export function greedySampleText(): string {
  const text = readFileSync(GREEDY_SAMPLE, 'utf8');
  const fence = text.search(/^```/m);
  return (fence >= 0 ? text.slice(0, fence) : text).replace(/\n$/, '');
}

/** The seeded sample greedy-sample.txt quotes for `./run ... -t 1.0 -p 0.9 -s 133742`: the text after that command line. */
export function seededSampleText(): string {
  const text = readFileSync(GREEDY_SAMPLE, 'utf8');
  const cmd = /^\$ \.\/run .*-s 133742\n/m.exec(text);
  if (!cmd) throw new Error(`${GREEDY_SAMPLE}: no seeded sample after a "./run ... -s 133742" line`);
  const rest = text.slice(cmd.index + cmd[0].length);
  const fence = rest.search(/^```/m);
  return (fence >= 0 ? rest.slice(0, fence) : rest).replace(/\n$/, '');
}

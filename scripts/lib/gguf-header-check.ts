/**
 * Walks a GGUF header field by field against the file's size, so that a cut file is refused with
 * what is cut (which metadata entry or tensor description, which part of it, at which byte) rather
 * than with whatever the parser makes of the missing bytes: @huggingface/gguf reads past the end as
 * zeros and reports a header of empty names or no architecture. Layout (GGUF v2/v3, little endian):
 * magic "GGUF", u32 version, u64 tensor count, u64 metadata count, then each metadata entry (string
 * key, u32 type, value) and each tensor description (string name, u32 dims, u64 per dim, u32 type,
 * u64 offset); a string is a u64 length and that many bytes.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { ModelFormatError } from '../../src/model/errors.js';

/** bytes of each fixed-size GGUF value type; 8 (string) and 9 (array) have their own layout */
const FIXED: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
const STRING = 8;
const ARRAY = 9;

class Cut extends Error {
  constructor(readonly what: string) {
    super(what);
  }
}

/** The file's bytes from the start, read on demand in growing blocks (a header is a few MB at most). */
class HeaderReader {
  private buf = Buffer.alloc(0);
  pos = 0;

  constructor(
    private readonly fd: number,
    readonly size: number,
  ) {}

  private need(n: number, what: string): void {
    if (this.pos + n > this.size) throw new Cut(what);
    if (this.pos + n <= this.buf.length) return;
    const want = Math.min(this.size, Math.max(this.pos + n, this.buf.length * 2, 1 << 16));
    const next = Buffer.alloc(want);
    this.buf.copy(next);
    readSync(this.fd, next, this.buf.length, want - this.buf.length, this.buf.length);
    this.buf = next;
  }

  u32(what: string): number {
    this.need(4, what);
    return this.buf.readUInt32LE((this.pos += 4) - 4);
  }

  u64(what: string): bigint {
    this.need(8, what);
    return this.buf.readBigUInt64LE((this.pos += 8) - 8);
  }

  skip(n: bigint, what: string): void {
    if (BigInt(this.pos) + n > BigInt(this.size)) throw new Cut(what);
    this.need(Number(n), what);
    this.pos += Number(n);
  }

  string(what: string): string {
    const n = this.u64(`the length of ${what}`);
    if (BigInt(this.pos) + n > BigInt(this.size)) throw new Cut(`${what} (${n} bytes)`);
    this.need(Number(n), what);
    return this.buf.toString('utf8', this.pos, (this.pos += Number(n)));
  }
}

function skipValue(r: HeaderReader, type: number, what: string): void {
  if (type === STRING) {
    r.string(what);
    return;
  }
  if (type === ARRAY) {
    const inner = r.u32(`the element type of ${what}`);
    const count = r.u64(`the length of ${what}`);
    if (FIXED[inner] !== undefined) {
      r.skip(count * BigInt(FIXED[inner]), `${what} (${count} values of ${FIXED[inner]} bytes)`);
      return;
    }
    for (let i = 0n; i < count; i++) skipValue(r, inner, `element ${i + 1n} of ${count} of ${what}`);
    return;
  }
  const n = FIXED[type];
  if (n === undefined) throw new Error(`value type ${type}`);
  r.skip(BigInt(n), what);
}

/**
 * Throws a ModelFormatError naming what is cut when the header of the GGUF file at `path` (`size`
 * bytes, magic already checked) ends before its last tensor description; an unknown value type is
 * left to the parser, which names it.
 */
export function checkGgufHeaderComplete(path: string, size: number): void {
  const fd = openSync(path, 'r');
  const r = new HeaderReader(fd, size);
  const cut = (what: string) =>
    new ModelFormatError(
      path,
      `a complete GGUF header`,
      `a file of ${size} bytes that ends inside ${what}: the header is truncated`,
    );
  try {
    r.skip(4n, 'the magic');
    r.u32('the version');
    const tensors = r.u64('the tensor count');
    const entries = r.u64('the metadata entry count');
    for (let i = 0n; i < entries; i++) {
      const entry = `metadata entry ${i + 1n} of ${entries}`;
      const key = r.string(`the key of ${entry}`);
      const type = r.u32(`the value type of ${entry} (${key})`);
      skipValue(r, type, `the value of ${entry} (${key})`);
    }
    for (let i = 0n; i < tensors; i++) {
      const tensor = `tensor description ${i + 1n} of ${tensors}`;
      const name = r.string(`the name of ${tensor}`);
      const dims = r.u32(`the dimension count of ${tensor} (${name})`);
      r.skip(BigInt(dims) * 8n, `the dimensions of ${tensor} (${name})`);
      r.u32(`the type of ${tensor} (${name})`);
      r.u64(`the data offset of ${tensor} (${name})`);
    }
  } catch (e) {
    if (e instanceof Cut) throw cut(e.what);
    if (e instanceof Error && e.message.startsWith('value type ')) return;
    throw e;
  } finally {
    closeSync(fd);
  }
}

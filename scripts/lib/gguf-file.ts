/** Reads a local GGUF file: the header through @huggingface/gguf, the tensor bytes from the file itself. */
import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { gguf } from '@huggingface/gguf';
import { ModelFormatError } from '../../src/model/errors.js';
import { ggmlTypeInfo, tensorBytes } from '../../src/model/ggml-quants.js';
import type { GgufHeader } from '../../src/model/gguf-model.js';
import { checkGgufHeaderComplete } from './gguf-header-check.js';

/** Why a path cannot be read, in words (the error's code: ENOENT, EISDIR, EACCES, ...). */
export function unreadableReason(e: unknown): string {
  const code = (e as { code?: string }).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EISDIR') return 'a directory, not a file';
  if (code === 'EACCES' || code === 'EPERM') return 'a file this user may not read (permission denied)';
  if (code === 'ENOTDIR') return 'a path through something that is not a directory';
  if (code === 'ELOOP') return 'a loop of symbolic links';
  return (e as Error).message ?? String(e);
}

export async function readGgufHeader(path: string): Promise<GgufHeader> {
  let size: number;
  const head = new Uint8Array(4);
  try {
    const st = statSync(path);
    if (st.isDirectory()) throw Object.assign(new Error('directory'), { code: 'EISDIR' });
    size = st.size;
    const fd = openSync(path, 'r');
    try {
      readSync(fd, head, 0, 4, 0);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    throw new ModelFormatError(path, 'a readable GGUF file', unreadableReason(e));
  }
  if (size < 4)
    throw new ModelFormatError(
      path,
      'a GGUF file (4 bytes of magic "GGUF" and a header)',
      `${size} bytes: the file is truncated`,
    );
  if (new TextDecoder().decode(head) !== 'GGUF')
    throw new ModelFormatError(
      path,
      'a GGUF file (magic "GGUF")',
      `the bytes ${JSON.stringify(new TextDecoder().decode(head))}`,
    );
  checkGgufHeaderComplete(path, size);
  let parsed: Awaited<ReturnType<typeof gguf>>;
  try {
    parsed = await gguf(path, { allowLocalFile: true });
  } catch (e) {
    throw new ModelFormatError(path, 'a complete GGUF header', `an unreadable one (${(e as Error).message})`);
  }
  const dataStart = Number(parsed.tensorDataOffset);
  const tensors = parsed.tensorInfos.map((t) => ({
    name: t.name,
    dims: t.shape.map(Number),
    type: Number(t.dtype),
    offset: Number(t.offset),
  }));
  // A truncated download is caught here, by the first tensor that does not fit, before anything is built.
  for (const t of tensors) {
    if (!ggmlTypeInfo(t.type)) continue; // parseGgufModel names it
    const n = t.dims.reduce((a, b) => a * b, 1);
    const end = dataStart + t.offset + tensorBytes(t.type, n);
    if (end > size)
      throw new ModelFormatError(
        path,
        `${end} bytes at least (tensor ${t.name} ends there)`,
        `${size} bytes: the file is truncated`,
      );
  }
  let bytes: Uint8Array | null = null;
  const byName = new Map(tensors.map((t) => [t.name, t]));
  return {
    version: Number(parsed.metadata.version),
    metadata: parsed.metadata as Record<string, unknown>,
    tensors,
    read(name) {
      const t = byName.get(name)!;
      if (!bytes) {
        const buf = readFileSync(path);
        bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
      }
      const start = dataStart + t.offset;
      return bytes.subarray(
        start,
        start +
          tensorBytes(
            t.type,
            t.dims.reduce((a, b) => a * b, 1),
          ),
      );
    },
  };
}

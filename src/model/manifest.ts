import { z } from 'zod';
import { ModelFormatError } from './errors.js';
import { resolveQuant, type QuantSpec } from './quant.js';

export const MANIFEST_FORMAT = 'lazy-edge-shards';
/** 2: embedding and head split into row parts; GGUF sources (byte-level BPE tokenizer, jinja chat template). */
export const MANIFEST_VERSION = 2;

const fileEntry = z.object({
  file: z.string().min(1),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  bytes: z.number().int().nonnegative(),
});
export type FileEntry = z.infer<typeof fileEntry>;
/** One file of a table split by vocabulary rows (the 25 MiB static-asset limit); parts are in row order. */
const partEntry = fileEntry.extend({ rows: z.number().int().positive() });
export type PartEntry = z.infer<typeof partEntry>;

const int = z.number().int().positive();
export const manifestSchema = z.object({
  format: z.literal(MANIFEST_FORMAT),
  version: z.literal(MANIFEST_VERSION),
  name: z.string().min(1),
  /** True when the weights are seeded random numbers (speed work only, never quality claims). */
  synthetic: z.boolean(),
  source: z.object({ file: z.string(), sha256: z.string().optional(), seed: z.number().optional() }),
  /** Weight format and the kernel that runs it (src/model/quant.ts); `kernel` defaults per format. */
  quant: z.object({
    format: z.string(),
    blockSize: z.number().int().positive().optional(),
    kernel: z.string().optional(),
  }),
  config: z.object({
    dim: int,
    hiddenDim: int,
    nLayers: int,
    nHeads: int,
    nKvHeads: int,
    vocabSize: int,
    seqLen: int,
    headSize: int,
    kvDim: int,
    normEps: z.number().positive(),
    ropeTheta: z.number().positive(),
  }),
  tokenizer: z.discriminatedUnion('format', [
    z.object({ format: z.literal('llama2c'), bosId: z.number().int(), eosId: z.number().int() }).merge(fileEntry),
    /** a Hugging Face tokenizer.json built from a GGUF's vocabulary (src/model/bpe-tokenizer.ts) */
    z
      .object({
        format: z.literal('hf-bpe'),
        bosId: z.number().int(),
        eosId: z.number().int(),
        addBos: z.boolean(),
        /** ids that end a generation */
        endIds: z.array(z.number().int().nonnegative()).min(1),
      })
      .merge(fileEntry),
  ]),
  /**
   * How chat messages become a prompt: the model's own jinja template (a GGUF's tokenizer.chat_template),
   * or, for a base model, a plain documented template of per-role strings.
   */
  chatTemplate: z.union([
    z.object({ format: z.literal('jinja'), template: z.string().min(1), bosToken: z.string(), eosToken: z.string() }),
    z.object({ system: z.string(), user: z.string(), assistant: z.string(), generationPrompt: z.string() }),
  ]),
  files: z.object({
    embed: z.array(partEntry).min(1),
    layers: z.array(fileEntry).min(1),
    head: z.array(partEntry).min(1),
  }),
});
export type Manifest = z.infer<typeof manifestSchema>;

export function parseManifest(text: string, file = 'manifest.json'): Manifest {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ModelFormatError(file, 'JSON', `unparseable text (${(e as Error).message})`);
  }
  const r = manifestSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new ModelFormatError(
      file,
      `a valid ${MANIFEST_FORMAT} v${MANIFEST_VERSION} manifest`,
      `${issue.path.join('.') || '(root)'}: ${issue.message}`,
    );
  }
  if (r.data.files.layers.length !== r.data.config.nLayers) {
    throw new ModelFormatError(file, `${r.data.config.nLayers} layer files`, `${r.data.files.layers.length}`);
  }
  for (const part of ['embed', 'head'] as const) {
    const rows = r.data.files[part].reduce((n, p) => n + p.rows, 0);
    if (rows !== r.data.config.vocabSize)
      throw new ModelFormatError(file, `${part} parts covering ${r.data.config.vocabSize} rows`, `${rows}`);
  }
  quantOf(r.data, file);
  return r.data;
}

/** The manifest's weight format with defaults filled in; a format this build cannot run is a ModelFormatError. */
export function quantOf(m: Pick<Manifest, 'quant'>, file = 'manifest.json'): QuantSpec {
  const r = resolveQuant(m.quant);
  if ('error' in r) throw new ModelFormatError(file, 'a supported weight format (f32, int8, int4, gguf)', r.error);
  return r.spec;
}

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** Rejects a file whose bytes differ from what the manifest promised (truncated copy, stale build). */
export async function verifyFile(entry: FileEntry, bytes: Uint8Array): Promise<void> {
  if (bytes.byteLength !== entry.bytes)
    throw new ModelFormatError(entry.file, `${entry.bytes} bytes`, `${bytes.byteLength} bytes`);
  const hash = await sha256Hex(bytes);
  if (hash !== entry.sha256) throw new ModelFormatError(entry.file, `sha256 ${entry.sha256}`, `sha256 ${hash}`);
}

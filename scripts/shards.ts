/**
 * npm run shards -- --gguf FILE [--name NAME] [--out DIR] [--if-missing]
 *                   [--kernel dequant|nbits|nbits-zp|nbits8|integer|attn=K,ffn=K,head=K,embed=q8|q4]
 *                   [--attn K] [--ffn K] [--head K] [--embed q8|q4] [--head-parts N]
 * npm run shards -- [--checkpoint FILE] [--tokenizer FILE] [--name NAME] [--out DIR] [--if-missing]
 *                   [--random dim=96,layers=3,heads=6,kv_heads=2,hidden=256,vocab=512,seq_len=512,seed=1]
 *                   [--quant f32|int8|int4] [--block-size 32] [--kernel dequant|integer|nbits]
 * Converts a GGUF (llama architecture; weights keep the file's block types) or a llama2.c checkpoint
 * (default: the shared stories260K) into per-layer ONNX shards. For a checkpoint without --quant the
 * format is chosen by model size (docs/QUANTIZATION.md).
 * For a GGUF, --kernel sets the kernel of the layers' matrices (or, as role=kernel items, of any group);
 * --attn/--ffn/--head/--embed override one group; a kernel that keeps the layers quantized also holds
 * the head quantized (nbits8: the file's Q8_0 exactly) unless --head says otherwise. src/model/quant.ts
 * describes the kernels, docs/QUANTIZATION.md measures them.
 */
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import type { RandomCheckpointOptions } from '../src/model/checkpoint.js';
import { defaultQuant } from '../src/engine/memory-budget.js';
import {
  DEFAULT_INT4_BLOCK_SIZE,
  GGUF_MATRIX_KERNELS,
  ggufQuant,
  KERNELS_OF,
  parseGgufKernels,
  QUANT_FORMATS,
  quantLabel,
  resolveQuant,
  type GgufKernels,
  type QuantFormat,
  type QuantSpec,
} from '../src/model/quant.js';
import { DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, fail, progress, runMain, shardsDir } from './lib/node-env.js';
import { buildAndWrite, sourceFromCheckpoint, sourceFromGguf, sourceFromRandom, upToDate } from './lib/shard-tasks.js';
import { unreadableReason } from './lib/gguf-file.js';
import { sha256File } from './lib/served-model.js';

const RANDOM_KEYS: Record<string, keyof RandomCheckpointOptions> = {
  dim: 'dim',
  hidden: 'hiddenDim',
  layers: 'nLayers',
  heads: 'nHeads',
  kv_heads: 'nKvHeads',
  vocab: 'vocabSize',
  seq_len: 'seqLen',
  seed: 'seed',
};

export function parseRandomSpec(spec: string): RandomCheckpointOptions {
  const o: Record<string, number> = { seed: 1, vocabSize: 512, seqLen: 2048 };
  for (const item of spec.split(',').filter(Boolean)) {
    const [k, v] = item.split('=');
    const key = RANDOM_KEYS[k];
    if (!key || !/^\d+$/.test(v ?? ''))
      fail(`--random item "${item}" is not one of ${Object.keys(RANDOM_KEYS).join(', ')} = integer`);
    o[key] = Number(v);
  }
  o.nKvHeads ??= o.nHeads;
  o.hiddenDim ??= Math.round((o.dim * 8) / 3 / 32) * 32;
  for (const k of ['dim', 'nLayers', 'nHeads'] as const)
    if (!o[k]) fail(`--random needs ${k === 'nLayers' ? 'layers' : k === 'nHeads' ? 'heads' : k}=`);
  return o as unknown as RandomCheckpointOptions;
}

/** --quant/--kernel/--block-size as a checked spec; null when --quant is absent (the size-based default applies). */
export function parseQuantArgs(quant?: string, kernel?: string, blockSize?: string): QuantSpec | null {
  if (quant === undefined) {
    if (kernel !== undefined || blockSize !== undefined) fail('--kernel and --block-size need --quant');
    return null;
  }
  if (!(QUANT_FORMATS as readonly string[]).includes(quant))
    fail(`--quant "${quant}" is not one of ${QUANT_FORMATS.join(', ')}`);
  if (blockSize !== undefined && !/^\d+$/.test(blockSize)) fail(`--block-size "${blockSize}" is not an integer`);
  const format = quant as QuantFormat;
  const r = resolveQuant({
    format,
    kernel: kernel ?? KERNELS_OF[format][0],
    blockSize:
      format === 'int4'
        ? Number(blockSize ?? DEFAULT_INT4_BLOCK_SIZE)
        : blockSize === undefined
          ? undefined
          : Number(blockSize),
  });
  if ('error' in r)
    fail(r.error.replace(/quant\.(\w+)/g, (_, k: string) => `--${k === 'blockSize' ? 'block-size' : k}`));
  return r.spec;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      checkpoint: { type: 'string' },
      gguf: { type: 'string' },
      tokenizer: { type: 'string' },
      name: { type: 'string' },
      out: { type: 'string' },
      random: { type: 'string' },
      'if-missing': { type: 'boolean', default: false },
      quant: { type: 'string' },
      kernel: { type: 'string' },
      'block-size': { type: 'string' },
      attn: { type: 'string' },
      ffn: { type: 'string' },
      head: { type: 'string' },
      embed: { type: 'string' },
      'head-parts': { type: 'string' },
    },
  });
  if (values.gguf === undefined) {
    for (const k of ['attn', 'ffn', 'head', 'embed', 'head-parts'] as const)
      if (values[k] !== undefined) fail(`--${k} applies to --gguf only`);
  }
  if (values.gguf !== undefined) return ggufMain(values.gguf, values);
  const quant = parseQuantArgs(values.quant, values.kernel, values['block-size']);
  if (quant?.format === 'gguf') fail("--quant gguf keeps a GGUF's own blocks: use it with --gguf FILE");
  const tokenizer = values.tokenizer ?? join(DEFAULT_MODEL_DIR, 'tok512.bin');
  const source = values.random
    ? sourceFromRandom(values.name ?? 'random', parseRandomSpec(values.random), tokenizer)
    : await sourceFromCheckpoint({
        checkpoint: values.checkpoint ?? join(DEFAULT_MODEL_DIR, 'stories260K.bin'),
        tokenizer,
        name: values.name ?? DEFAULT_MODEL_NAME,
      });
  source.quant = quant ?? defaultQuant(source.checkpoint.config);
  const out = values.out ?? shardsDir(source.name);
  if (values['if-missing'] && upToDate(out, source, source.quant)) {
    progress(`shards up to date: ${out} (${quantLabel(source.quant)})`);
    return;
  }
  progress(
    `building ${source.synthetic ? 'SYNTHETIC (seeded random weights) ' : ''}${quantLabel(source.quant)} shards for ${source.name} -> ${out}`,
  );
  const built = await buildAndWrite(out, source, progress);
  const bytes = [...built.files.values()].reduce((s, b) => s + b.byteLength, 0);
  progress(`done: ${built.files.size} files, ${(bytes / 1e6).toFixed(2)} MB`);
}

type GgufArgs = {
  name?: string;
  out?: string;
  'if-missing'?: boolean;
  checkpoint?: string;
  tokenizer?: string;
  random?: string;
  quant?: string;
  kernel?: string;
  'block-size'?: string;
  attn?: string;
  ffn?: string;
  head?: string;
  embed?: string;
  'head-parts'?: string;
};

/** --kernel and the per-group options as one set of GGUF kernels (clear message and exit on anything else). */
export function parseGgufKernelArgs(v: Pick<GgufArgs, 'kernel' | 'attn' | 'ffn' | 'head' | 'embed'>): GgufKernels {
  const single = v.kernel !== undefined && !v.kernel.includes('=');
  if (single && !(GGUF_MATRIX_KERNELS as readonly string[]).includes(v.kernel!))
    fail(`--kernel "${v.kernel}" is not one of ${GGUF_MATRIX_KERNELS.join(', ')} (or role=kernel items)`);
  const base = single ? `attn=${v.kernel},ffn=${v.kernel}${v.kernel === 'dequant' ? '' : ',head=nbits8'}` : v.kernel;
  const items = [
    base,
    ...(['attn', 'ffn', 'head', 'embed'] as const).filter((r) => v[r] !== undefined).map((r) => `${r}=${v[r]}`),
  ].filter(Boolean);
  const r = parseGgufKernels(items.length ? items.join(',') : undefined);
  if ('error' in r) fail(r.error.replace(/^quant\.kernel /, '--kernel '));
  return r.kernels;
}

async function ggufMain(path: string, values: GgufArgs): Promise<void> {
  for (const k of ['checkpoint', 'tokenizer', 'random', 'block-size'] as const)
    if (values[k] !== undefined) fail(`--${k} does not apply to --gguf`);
  if (values.quant !== undefined && values.quant !== 'gguf')
    fail(`--quant ${values.quant} is not available for a GGUF: its shards keep the file's own blocks (--quant gguf)`);
  const kernels = parseGgufKernelArgs(values);
  const hp = values['head-parts'];
  if (hp !== undefined && !/^[1-9]\d*$/.test(hp)) fail(`--head-parts "${hp}" is not a positive integer`);
  const quant = ggufQuant(kernels);
  const name = values.name ?? basename(path).replace(/\.gguf$/i, '');
  const out = values.out ?? shardsDir(name);
  const sha256 = await sha256File(path).catch((e: unknown) => fail(`cannot read ${path}: ${unreadableReason(e)}`));
  if (values['if-missing'] && upToDate(out, { source: { file: basename(path), sha256 } }, quant)) {
    progress(`shards up to date: ${out} (${quantLabel(quant)})`);
    return;
  }
  // Everything is read and checked before anything is written: a refused file leaves `out` as it was.
  const source = await sourceFromGguf(path, name, sha256);
  source.kernels = kernels;
  if (hp !== undefined) source.headParts = Number(hp);
  const c = source.model.config;
  progress(
    `building ${quantLabel(quant)} shards for ${name} from ${basename(path)} (${source.model.displayName}: ${c.nLayers} layers, dim ${c.dim}, ${c.nHeads}/${c.nKvHeads} heads, vocab ${c.vocabSize}, context ${c.seqLen}) -> ${out}`,
  );
  const built = await buildAndWrite(out, source, progress);
  const bytes = [...built.files.values()].reduce((s, b) => s + b.byteLength, 0);
  progress(`done: ${built.files.size} files, ${(bytes / 1e6).toFixed(2)} MB`);
}

runMain(main);

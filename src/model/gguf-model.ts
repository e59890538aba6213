/**
 * A GGUF file (llama architecture) as one model description: the config from its metadata, every
 * weight matrix as the file stores it (ggml type + raw blocks), the tokenizer spec and the chat
 * template. Pure: the caller parses the header (scripts/lib/gguf-file.ts, with @huggingface/gguf)
 * and hands over the tensor bytes, so nothing here touches a file system.
 */
import type { BpeTokenizerSpec } from './bpe-tokenizer.js';
import { validateConfig, type ModelConfig } from './config.js';
import { ModelFormatError } from './errors.js';
import { dequantize, ggmlTypeInfo, ggmlTypeName, tensorBytes } from './ggml-quants.js';
import type { LayerWeights } from './checkpoint.js';

/** One matrix [out, in] as stored: `out` rows of `inp` values, each row a run of ggml blocks. */
export interface GgmlMatrix {
  /** ggml type id (src/model/ggml-quants.ts) */
  type: number;
  out: number;
  inp: number;
  /** [out, inp / blockValues blocks] the file's block bytes, row-major */
  data: Uint8Array;
}

export interface GgufTensorInfo {
  name: string;
  /** ggml order: dims[0] is the fastest (the input dimension of a matrix) */
  dims: number[];
  type: number;
}

/** What the header parser found; `read` returns a tensor's bytes (checked against the file's length by the caller). */
export interface GgufHeader {
  version: number;
  metadata: Record<string, unknown>;
  tensors: GgufTensorInfo[];
  read(name: string): Uint8Array;
}

export interface GgufModel {
  config: ModelConfig;
  /** [vocab, dim] token embedding rows */
  embedding: GgmlMatrix;
  layers: LayerWeights<GgmlMatrix>[];
  /** [dim] final RMSNorm gain */
  rmsFinal: Float32Array;
  /** [vocab, dim] the output head; the very same object as `embedding` when the file ties them */
  head: GgmlMatrix;
  tiedHead: boolean;
  /**
   * [headSize / 2] divisors of RoPE's inverse frequencies (Llama 3's rope scaling, which llama.cpp's
   * converter stores as the `rope_freqs.weight` tensor); undefined when the file has none.
   */
  ropeFreqFactors?: Float32Array;
  tokenizer: BpeTokenizerSpec;
  /** tokenizer.chat_template, verbatim; undefined for a base model without one */
  chatTemplate?: string;
  /** general.name, for messages and the manifest */
  displayName: string;
}

const ARCH = 'llama';

function meta(h: GgufHeader, file: string) {
  const get = (key: string): unknown => h.metadata[key];
  const num = (key: string, fallback?: number): number => {
    const v = get(key);
    const n = typeof v === 'bigint' ? Number(v) : v;
    if (typeof n === 'number' && Number.isFinite(n)) return n;
    if (fallback !== undefined && v === undefined) return fallback;
    throw new ModelFormatError(file, `metadata ${key} (a number)`, v === undefined ? 'no such key' : JSON.stringify(v));
  };
  const str = (key: string): string | undefined => {
    const v = get(key);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw new ModelFormatError(file, `metadata ${key} (a string)`, JSON.stringify(v));
    return v;
  };
  const bool = (key: string, fallback: boolean): boolean => {
    const v = get(key);
    if (v === undefined) return fallback;
    if (typeof v !== 'boolean') throw new ModelFormatError(file, `metadata ${key} (a bool)`, JSON.stringify(v));
    return v;
  };
  const arr = <T>(key: string, check: (x: unknown) => x is T): T[] => {
    const v = get(key);
    if (!Array.isArray(v) || !v.every(check))
      throw new ModelFormatError(file, `metadata ${key} (an array)`, v === undefined ? 'no such key' : typeof v);
    return v;
  };
  return { get, num, str, bool, arr };
}

const isString = (x: unknown): x is string => typeof x === 'string';
const isNumber = (x: unknown): x is number => typeof x === 'number';

/** Every value the model needs comes from the metadata; what the forward pass cannot honour is refused. */
function readConfig(h: GgufHeader, file: string): { config: ModelConfig; vocab: number } {
  const m = meta(h, file);
  const arch = m.str('general.architecture');
  if (arch !== ARCH)
    throw new ModelFormatError(
      file,
      `general.architecture "${ARCH}" (the only architecture this build runs)`,
      arch === undefined ? 'no architecture key' : `"${arch}"`,
    );
  const k = (s: string) => `${ARCH}.${s}`;
  const dim = m.num(k('embedding_length'));
  const nHeads = m.num(k('attention.head_count'));
  const nKvHeads = m.num(k('attention.head_count_kv'), nHeads);
  const headSize = dim / nHeads;
  const tokens = m.arr('tokenizer.ggml.tokens', isString);
  const vocab = m.num(k('vocab_size'), tokens.length);
  const ropeDims = m.num(k('rope.dimension_count'), headSize);
  if (ropeDims !== headSize)
    throw new ModelFormatError(
      file,
      `${k('rope.dimension_count')} = head size ${headSize} (partial rotary is not supported)`,
      String(ropeDims),
    );
  const scaling = m.str(k('rope.scaling.type'));
  if (scaling !== undefined && scaling !== 'none') {
    throw new ModelFormatError(
      file,
      `no ${k('rope.scaling.type')} (linear/yarn RoPE scaling is not supported; Llama 3 scaling comes as rope_freqs.weight and is)`,
      `"${scaling}"`,
    );
  }
  const config: ModelConfig = {
    dim,
    hiddenDim: m.num(k('feed_forward_length')),
    nLayers: m.num(k('block_count')),
    nHeads,
    nKvHeads,
    vocabSize: vocab,
    seqLen: m.num(k('context_length')),
    headSize,
    kvDim: nKvHeads * headSize,
    normEps: m.num(k('attention.layer_norm_rms_epsilon')),
    ropeTheta: m.num(k('rope.freq_base'), 10000),
  };
  validateConfig(config, file);
  return { config, vocab };
}

function readTokenizer(h: GgufHeader, file: string, vocab: number): BpeTokenizerSpec {
  const m = meta(h, file);
  const model = m.str('tokenizer.ggml.model');
  if (model !== 'gpt2') {
    throw new ModelFormatError(
      file,
      'tokenizer.ggml.model "gpt2" (byte-level BPE; SentencePiece GGUFs are not supported yet)',
      model === undefined ? 'no tokenizer' : `"${model}"`,
    );
  }
  const tokens = m.arr('tokenizer.ggml.tokens', isString);
  if (tokens.length !== vocab)
    throw new ModelFormatError(file, `${vocab} tokens (llama.vocab_size)`, `${tokens.length}`);
  const types = m.get('tokenizer.ggml.token_type');
  const tokenTypes = Array.isArray(types) ? types.map(Number) : new Array<number>(vocab).fill(1);
  const optional = (key: string) => (m.get(key) === undefined ? undefined : m.num(key));
  return {
    model,
    pre: m.str('tokenizer.ggml.pre') ?? 'default',
    tokens,
    tokenTypes,
    merges: m.arr('tokenizer.ggml.merges', isString),
    bosId: m.num('tokenizer.ggml.bos_token_id'),
    eosId: m.num('tokenizer.ggml.eos_token_id'),
    // llama.cpp's default for BPE vocabularies is no BOS unless the file asks for it.
    addBos: m.bool('tokenizer.ggml.add_bos_token', false),
    eotId: optional('tokenizer.ggml.eot_token_id'),
    eomId: optional('tokenizer.ggml.eom_token_id'),
  };
}

/** Tensor names of block l, as llama.cpp's converter writes them, with the [out, in] each must have. */
function blockTensors(c: ModelConfig, l: number) {
  const p = `blk.${l}.`;
  return {
    rmsAtt: `${p}attn_norm.weight`,
    rmsFfn: `${p}ffn_norm.weight`,
    wq: [`${p}attn_q.weight`, c.dim, c.dim],
    wk: [`${p}attn_k.weight`, c.kvDim, c.dim],
    wv: [`${p}attn_v.weight`, c.kvDim, c.dim],
    wo: [`${p}attn_output.weight`, c.dim, c.dim],
    w1: [`${p}ffn_gate.weight`, c.hiddenDim, c.dim],
    w2: [`${p}ffn_down.weight`, c.dim, c.hiddenDim],
    w3: [`${p}ffn_up.weight`, c.hiddenDim, c.dim],
  } as const;
}

export function parseGgufModel(h: GgufHeader, file: string): GgufModel {
  if (h.version !== 2 && h.version !== 3)
    throw new ModelFormatError(file, 'GGUF version 2 or 3', `version ${h.version}`);
  // Unknown tensor types are refused before anything else is read, naming the tensor.
  for (const t of h.tensors) {
    if (!ggmlTypeInfo(t.type))
      throw new ModelFormatError(
        file,
        `tensor types this build can read (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)`,
        `${t.name} of ${ggmlTypeName(t.type)}`,
      );
  }
  const { config, vocab } = readConfig(h, file);
  const byName = new Map(h.tensors.map((t) => [t.name, t]));
  const info = (name: string): GgufTensorInfo => {
    const t = byName.get(name);
    if (!t) throw new ModelFormatError(file, `a tensor ${name}`, 'none');
    return t;
  };
  const matrix = (name: string, out: number, inp: number): GgmlMatrix => {
    const t = info(name);
    if (t.dims.length !== 2 || t.dims[0] !== inp || t.dims[1] !== out) {
      throw new ModelFormatError(file, `${name} of shape [${inp}, ${out}] (ggml order)`, `[${t.dims.join(', ')}]`);
    }
    const data = h.read(name);
    const want = tensorBytes(t.type, out * inp);
    if (data.byteLength !== want)
      throw new ModelFormatError(file, `${name}: ${want} bytes of ${ggmlTypeName(t.type)}`, `${data.byteLength} bytes`);
    return { type: t.type, out, inp, data };
  };
  const vector = (name: string, n: number): Float32Array => {
    const t = info(name);
    const count = t.dims.reduce((a, b) => a * b, 1);
    if (count !== n) throw new ModelFormatError(file, `${name} of ${n} values`, `${count}`);
    return dequantize(t.type, h.read(name), n);
  };

  const layers: LayerWeights<GgmlMatrix>[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    const n = blockTensors(config, l);
    const mat = (spec: readonly [string, number, number]) => matrix(spec[0], spec[1], spec[2]);
    layers.push({
      rmsAtt: vector(n.rmsAtt, config.dim),
      wq: mat(n.wq),
      wk: mat(n.wk),
      wv: mat(n.wv),
      wo: mat(n.wo),
      rmsFfn: vector(n.rmsFfn, config.dim),
      w1: mat(n.w1),
      w2: mat(n.w2),
      w3: mat(n.w3),
    });
  }
  const embedding = matrix('token_embd.weight', vocab, config.dim);
  const tiedHead = !byName.has('output.weight');
  const head = tiedHead ? embedding : matrix('output.weight', vocab, config.dim);
  const ropeFreqFactors = byName.has('rope_freqs.weight')
    ? vector('rope_freqs.weight', config.headSize / 2)
    : undefined;
  const m = meta(h, file);
  return {
    config,
    embedding,
    layers,
    rmsFinal: vector('output_norm.weight', config.dim),
    head,
    tiedHead,
    ropeFreqFactors,
    tokenizer: readTokenizer(h, file, vocab),
    chatTemplate: m.str('tokenizer.chat_template'),
    displayName: m.str('general.name') ?? file,
  };
}

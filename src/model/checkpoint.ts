import { llama2cConfig, validateConfig, type ModelConfig, type ModelShape } from './config.js';
import { ModelFormatError } from './errors.js';
import { createRng, type Rng } from './prng.js';

/**
 * Weights of one transformer block. Matrices are stored the way llama2.c stores them:
 * (out, in) row-major, so output row r is the dot product of row r with the input vector.
 * `M` is how a matrix is held: f32 here, the file's own blocks for a GGUF (src/model/gguf-model.ts).
 */
export interface LayerWeights<M = Float32Array> {
  /** [dim] RMSNorm gain before attention */
  rmsAtt: Float32Array;
  /** [dim, dim] (out, in) row-major */
  wq: M;
  /** [kvDim, dim] (out, in) row-major */
  wk: M;
  /** [kvDim, dim] (out, in) row-major */
  wv: M;
  /** [dim, dim] (out, in) row-major */
  wo: M;
  /** [dim] RMSNorm gain before the FFN */
  rmsFfn: Float32Array;
  /** [hiddenDim, dim] (out, in) row-major; gate branch of SwiGLU */
  w1: M;
  /** [dim, hiddenDim] (out, in) row-major; down projection */
  w2: M;
  /** [hiddenDim, dim] (out, in) row-major; up branch of SwiGLU */
  w3: M;
}

export interface Checkpoint {
  config: ModelConfig;
  /** [vocabSize, dim] row-major */
  tokenEmbedding: Float32Array;
  layers: LayerWeights[];
  /** [dim] final RMSNorm gain */
  rmsFinal: Float32Array;
  /** [vocabSize, dim] (out, in) row-major; the very same buffer as tokenEmbedding when shared */
  wcls: Float32Array;
  sharedClassifier: boolean;
}

const HEADER_INTS = 7;
const HEADER_BYTES = HEADER_INTS * 4;
// Newer llama2.c exports (version 1/2) start with this magic instead of a v0 header; naming it
// turns a baffling "dim = 1634415666" into an actionable message.
const LLAMA2C_MAGIC = 0x616b3432;

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

interface Section {
  name: string;
  floats: number;
}

/** Float counts of every array in file order, exactly as run.c's memory_map_weights walks them. */
function fileSections(c: ModelConfig, shared: boolean): Section[] {
  const { dim, hiddenDim: h, nLayers: L, kvDim, vocabSize: V, seqLen, headSize } = c;
  const s: Section[] = [
    { name: 'token_embedding', floats: V * dim },
    { name: 'rms_att', floats: L * dim },
    { name: 'wq', floats: L * dim * dim },
    { name: 'wk', floats: L * kvDim * dim },
    { name: 'wv', floats: L * kvDim * dim },
    { name: 'wo', floats: L * dim * dim },
    { name: 'rms_ffn', floats: L * dim },
    { name: 'w1', floats: L * h * dim },
    { name: 'w2', floats: L * dim * h },
    { name: 'w3', floats: L * h * dim },
    { name: 'rms_final', floats: dim },
    { name: 'freq_cis_real', floats: (seqLen * headSize) / 2 },
    { name: 'freq_cis_imag', floats: (seqLen * headSize) / 2 },
  ];
  if (!shared) s.push({ name: 'wcls', floats: V * dim });
  return s;
}

/** Total file size the header implies; used both to validate and to allocate on serialize. */
export function llama2cCheckpointBytes(c: ModelConfig, sharedClassifier: boolean): number {
  let floats = 0;
  for (const s of fileSections(c, sharedClassifier)) floats += s.floats;
  return HEADER_BYTES + floats * 4;
}

function configFromHeader(h: Int32Array): { config: ModelConfig; shared: boolean } {
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, rawVocab, seqLen] = h;
  return {
    config: llama2cConfig({ dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize: Math.abs(rawVocab), seqLen }),
    // llama2.c's exporter signals an untied classifier by negating vocab_size.
    shared: rawVocab > 0,
  };
}

/**
 * Copies `count` little-endian floats starting at byte `offset`. Always copies: the source may be
 * unaligned (a subarray of a larger download) and callers must be free to drop the file bytes.
 */
function readFloats(bytes: Uint8Array, offset: number, count: number): Float32Array {
  const out = new Float32Array(count);
  if (LITTLE_ENDIAN_HOST) {
    new Uint8Array(out.buffer).set(bytes.subarray(offset, offset + count * 4));
  } else {
    const view = new DataView(bytes.buffer, bytes.byteOffset + offset, count * 4);
    for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true);
  }
  return out;
}

function writeFloats(dst: Uint8Array, offset: number, src: Float32Array): number {
  if (LITTLE_ENDIAN_HOST) {
    dst.set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength), offset);
  } else {
    const view = new DataView(dst.buffer, dst.byteOffset + offset, src.length * 4);
    for (let i = 0; i < src.length; i++) view.setFloat32(i * 4, src[i], true);
  }
  return offset + src.length * 4;
}

/** Parses a llama2.c legacy (v0) checkpoint, the format run.c reads. */
export function parseLlama2cCheckpoint(bytes: Uint8Array, file: string): Checkpoint {
  if (bytes.length < HEADER_BYTES) {
    throw new ModelFormatError(
      file,
      `a llama2.c checkpoint of at least ${HEADER_BYTES} bytes (7 x int32 header)`,
      `${bytes.length} bytes`,
    );
  }
  const hv = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  const header = new Int32Array(HEADER_INTS);
  for (let i = 0; i < HEADER_INTS; i++) header[i] = hv.getInt32(i * 4, true);

  if (header[0] === LLAMA2C_MAGIC) {
    throw new ModelFormatError(
      file,
      'a llama2.c legacy v0 checkpoint (7 x int32 header, as written by export.py --version 0)',
      `the magic "ak42" of a llama2.c version ${header[1]} export`,
    );
  }

  const { config, shared } = configFromHeader(header);
  try {
    validateConfig(config, file);
  } catch (e) {
    if (!(e instanceof ModelFormatError)) throw e;
    // Keep the raw header in the message: the derived field alone rarely explains what went wrong.
    throw new ModelFormatError(
      file,
      `a sane llama2.c header (${e.expected})`,
      `${e.found}; header [dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len] = [${Array.from(header).join(', ')}]`,
    );
  }

  const sections = fileSections(config, shared);
  const expectedBytes = llama2cCheckpointBytes(config, shared);
  if (expectedBytes !== bytes.length) {
    throw new ModelFormatError(
      file,
      `${Number.isSafeInteger(expectedBytes) ? expectedBytes : '> 2^53'} bytes as implied by the header ` +
        `(dim ${config.dim}, hidden_dim ${config.hiddenDim}, n_layers ${config.nLayers}, n_heads ${config.nHeads}, ` +
        `n_kv_heads ${config.nKvHeads}, vocab_size ${header[5]}, seq_len ${config.seqLen}, ` +
        `${shared ? 'shared' : 'separate'} classifier)`,
      `${bytes.length} bytes`,
    );
  }

  const offsets = new Map<string, number>();
  let off = HEADER_BYTES;
  for (const s of sections) {
    offsets.set(s.name, off);
    off += s.floats * 4;
  }
  const { dim, hiddenDim, nLayers, kvDim, vocabSize } = config;
  // Layer i's slice of a stacked [nLayers, ...] section.
  const layerSlice = (name: string, perLayer: number, i: number) =>
    readFloats(bytes, offsets.get(name)! + i * perLayer * 4, perLayer);

  const layers: LayerWeights[] = [];
  for (let i = 0; i < nLayers; i++) {
    layers.push({
      rmsAtt: layerSlice('rms_att', dim, i),
      wq: layerSlice('wq', dim * dim, i),
      wk: layerSlice('wk', kvDim * dim, i),
      wv: layerSlice('wv', kvDim * dim, i),
      wo: layerSlice('wo', dim * dim, i),
      rmsFfn: layerSlice('rms_ffn', dim, i),
      w1: layerSlice('w1', hiddenDim * dim, i),
      w2: layerSlice('w2', dim * hiddenDim, i),
      w3: layerSlice('w3', hiddenDim * dim, i),
    });
  }
  const tokenEmbedding = readFloats(bytes, offsets.get('token_embedding')!, vocabSize * dim);
  const rmsFinal = readFloats(bytes, offsets.get('rms_final')!, dim);
  const wcls = shared ? tokenEmbedding : readFloats(bytes, offsets.get('wcls')!, vocabSize * dim);
  return { config, tokenEmbedding, layers, rmsFinal, wcls, sharedClassifier: shared };
}

/**
 * The legacy RoPE tables the v0 exporter wrote (cos / sin of pos * theta^(-2j/headSize), shape
 * [seqLen, headSize/2]). run.c ignores them, but writing the real values rather than zeros keeps
 * serialized files interchangeable with ones produced by llama2.c's export.py.
 */
function legacyFreqCis(c: ModelConfig): { real: Float32Array; imag: Float32Array } {
  const half = c.headSize / 2;
  const real = new Float32Array(c.seqLen * half);
  const imag = new Float32Array(c.seqLen * half);
  const f = Math.fround;
  for (let j = 0; j < half; j++) {
    // Mirrors the float32 steps of model.py's precompute_freqs_cis.
    const freq = f(1 / f(Math.pow(c.ropeTheta, f(f(2 * j) / c.headSize))));
    for (let t = 0; t < c.seqLen; t++) {
      const angle = f(t * freq);
      real[t * half + j] = Math.cos(angle);
      imag[t * half + j] = Math.sin(angle);
    }
  }
  return { real, imag };
}

/** Inverse of parseLlama2cCheckpoint. */
export function serializeLlama2cCheckpoint(ck: Checkpoint): Uint8Array {
  const c = ck.config;
  validateConfig(c, '<serializeLlama2cCheckpoint>');
  const out = new Uint8Array(llama2cCheckpointBytes(c, ck.sharedClassifier));
  const hv = new DataView(out.buffer);
  const header = [
    c.dim,
    c.hiddenDim,
    c.nLayers,
    c.nHeads,
    c.nKvHeads,
    ck.sharedClassifier ? c.vocabSize : -c.vocabSize,
    c.seqLen,
  ];
  header.forEach((v, i) => hv.setInt32(i * 4, v, true));
  let off = HEADER_BYTES;
  off = writeFloats(out, off, ck.tokenEmbedding);
  const stacked: Array<keyof LayerWeights> = ['rmsAtt', 'wq', 'wk', 'wv', 'wo', 'rmsFfn', 'w1', 'w2', 'w3'];
  for (const key of stacked) {
    for (const layer of ck.layers) off = writeFloats(out, off, layer[key]);
  }
  off = writeFloats(out, off, ck.rmsFinal);
  const { real, imag } = legacyFreqCis(c);
  off = writeFloats(out, off, real);
  off = writeFloats(out, off, imag);
  if (!ck.sharedClassifier) off = writeFloats(out, off, ck.wcls);
  if (off !== out.length) {
    throw new ModelFormatError(
      '<serializeLlama2cCheckpoint>',
      `${out.length} bytes of weights for the config`,
      `${off} bytes (a weight buffer has the wrong length)`,
    );
  }
  return out;
}

export type RandomCheckpointOptions = ModelShape & {
  seed: number;
  sharedClassifier?: boolean;
};

function gaussian(rng: Rng, n: number, std: number, mean = 0): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = mean + std * rng.normal();
  return a;
}

/**
 * A seeded random model with the same layout as a real one, for tests and benchmarks at sizes no
 * real checkpoint exists for.
 *
 * Matrices use std 1/sqrt(fanIn) rather than a flat 0.02: every matmul input is RMS-normalised to
 * unit scale, so this keeps q·k scores and logits O(1). With 0.02 at these widths the attention and
 * output distributions would be nearly uniform, and a broken kernel could still agree with the
 * reference. Residual-branch outputs (wo, w2) are shrunk by 1/sqrt(2 nLayers) (GPT-2 style) so the
 * residual stream stays bounded as depth grows.
 */
export function randomCheckpoint(opts: RandomCheckpointOptions): Checkpoint {
  const config = llama2cConfig(opts);
  validateConfig(config, `<randomCheckpoint seed ${opts.seed}>`);
  const shared = opts.sharedClassifier ?? true;
  const rng = createRng(opts.seed);
  const { dim, hiddenDim, kvDim, vocabSize, nLayers } = config;
  const inDim = 1 / Math.sqrt(dim);
  const inHidden = 1 / Math.sqrt(hiddenDim);
  const residual = 1 / Math.sqrt(2 * nLayers);
  const normGain = (n: number) => gaussian(rng, n, 0.02, 1);

  // Also the tied classifier, so it gets the same 1/sqrt(fanIn) scale; RMSNorm makes the block
  // inputs indifferent to it (its mean square 1/dim is far above normEps).
  const tokenEmbedding = gaussian(rng, vocabSize * dim, inDim);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < nLayers; l++) {
    layers.push({
      rmsAtt: normGain(dim),
      wq: gaussian(rng, dim * dim, inDim),
      wk: gaussian(rng, kvDim * dim, inDim),
      wv: gaussian(rng, kvDim * dim, inDim),
      wo: gaussian(rng, dim * dim, inDim * residual),
      rmsFfn: normGain(dim),
      w1: gaussian(rng, hiddenDim * dim, inDim),
      w2: gaussian(rng, dim * hiddenDim, inHidden * residual),
      w3: gaussian(rng, hiddenDim * dim, inDim),
    });
  }
  const rmsFinal = normGain(dim);
  const wcls = shared ? tokenEmbedding : gaussian(rng, vocabSize * dim, inDim);
  return { config, tokenEmbedding, layers, rmsFinal, wcls, sharedClassifier: shared };
}

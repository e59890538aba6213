/**
 * The same model as ONE ONNX graph with a KV cache, laid out the way transformers.js (and the
 * optimum exports it runs) expects a decoder: every layer in one session, the cache passed in as
 * `past_key_values.N.key/value` and returned, grown, as `present.N.key/value`.
 *
 *   inputs   input_ids          int64 [batch, s]            (batch must be 1)
 *            attention_mask     int64 [batch, T]            T = past + s; 0 hides a key
 *            position_ids       int64 [batch, s]
 *            num_logits_to_keep int64 []                    0 = logits for every position, k = the last k
 *            past_key_values.N.key / .value  float [batch, kvHeads, past, headSize]   (N = 0..L-1)
 *   outputs  logits             float [batch, k, vocab]
 *            present.N.key / .value          float [batch, kvHeads, T, headSize]
 *
 * The layer math is the per-layer shards' (src/shards/layer-graphs.ts: same RMSNorm, fused QKV and
 * gate/up GEMMs, RoPE, GQA without repeating K/V), so the benchmark compares sharding against one
 * graph and nothing else. The causal mask is by index (key j visible to the query at position p iff
 * j <= p), which is what a dense cache means.
 */
import type { Checkpoint } from '../../src/model/checkpoint.js';
import type { ModelConfig } from '../../src/model/config.js';
import type { GraphSession, HostTensor } from '../../src/runtime/onnx-runtime.js';
import { GraphBuilder } from '../../src/shards/onnx-builder.js';
import {
  f32Linear,
  rmsNorm,
  ropeQK,
  ropeTables,
  stackRows,
  type LinearEmitter,
} from '../../src/shards/layer-graphs.js';

export const MONO_IO = {
  ids: 'input_ids',
  mask: 'attention_mask',
  positions: 'position_ids',
  keep: 'num_logits_to_keep',
  logits: 'logits',
  pastKey: (l: number) => `past_key_values.${l}.key`,
  pastValue: (l: number) => `past_key_values.${l}.value`,
  presentKey: (l: number) => `present.${l}.key`,
  presentValue: (l: number) => `present.${l}.value`,
} as const;

/** `linear` emits every projection and the head (f32 by default; a quantized emitter for transformers.js's q8/q4 files). */
export function buildMonolithicGraph(ck: Checkpoint, linear: LinearEmitter = f32Linear): Uint8Array {
  const cfg = ck.config;
  const { dim, hiddenDim, nHeads, nKvHeads, headSize: hs, kvDim, vocabSize, nLayers } = cfg;
  const group = nHeads / nKvHeads;
  const b = new GraphBuilder('decoder');
  const ids = b.input(MONO_IO.ids, 'int64', ['batch_size', 'sequence_length']);
  const attnMask = b.input(MONO_IO.mask, 'int64', ['batch_size', 'total_sequence_length']);
  const positions = b.input(MONO_IO.positions, 'int64', ['batch_size', 'sequence_length']);
  const keepN = b.input(MONO_IO.keep, 'int64', []);

  // [s, dim] token embeddings (batch 1 folded away)
  let x = b.op('Reshape', [
    b.op('Gather', [b.f32('token_embedding', [vocabSize, dim], ck.tokenEmbedding), ids], { axis: 0 }),
    b.i64('rows_dim', [-1, dim]),
  ]);
  const pos = b.op('Reshape', [b.op('Cast', [positions], { to: 1 }), b.i64('flat', [-1])]); // [s] float
  // RoPE tables once for all layers (the shards compute them per layer): [s, hs/2].
  const { cos, sin } = ropeTables(b, pos, hs, cfg.ropeTheta);

  // Additive mask [s, T]: key j is visible to query i iff j <= position_i and attention_mask[j] == 1.
  const total = b.op('Gather', [b.op('Shape', [attnMask]), b.tensor('one_i', 'int64', [], BigInt64Array.of(1n))], {
    axis: 0,
  });
  const keyIdx = b.op(
    'Cast',
    [
      b.op('Range', [
        b.tensor('zero_i', 'int64', [], BigInt64Array.of(0n)),
        total,
        b.tensor('step_i', 'int64', [], BigInt64Array.of(1n)),
      ]),
    ],
    { to: 1 },
  );
  const causal = b.op('LessOrEqual', [
    b.op('Unsqueeze', [keyIdx, b.i64('ax0', [0])]),
    b.op('Unsqueeze', [pos, b.i64('ax1b', [1])]),
  ]);
  const present = b.op('Cast', [b.op('Reshape', [attnMask, b.i64('flat2', [1, -1])])], { to: 9 }); // [1, T] bool
  const maskAdd = b.op('Where', [b.op('And', [causal, present]), b.scalar('zero', 0), b.scalar('neg_inf', -Infinity)]);
  const scale = b.scalar('scale', 1 / Math.sqrt(hs));
  const qHeads = b.i64('q_heads', [0, nKvHeads, group, hs]);
  const bsnh = b.i64('bsnh', [1, -1, nKvHeads, hs]);
  const kvBatch = b.i64('kv_batch', [nKvHeads, 1, -1, hs]);

  for (let l = 0; l < nLayers; l++) {
    const w = ck.layers[l];
    const t = `l${l}`;
    const pastK = b.input(MONO_IO.pastKey(l), 'float32', ['batch_size', nKvHeads, 'past_sequence_length', hs]);
    const pastV = b.input(MONO_IO.pastValue(l), 'float32', ['batch_size', nKvHeads, 'past_sequence_length', hs]);
    const xn = rmsNorm(b, x, w.rmsAtt, cfg.normEps, `${t}_rms_att`);
    const qkv = linear(b, xn, `${t}_wqkv`, stackRows(w.wq, w.wk, w.wv), dim + 2 * kvDim, dim);
    const [qk0, vNew] = b.opN(
      'Split',
      [qkv, b.i64(`${t}_qkv_split`, [dim + kvDim, kvDim])],
      { axis: -1 },
      { outputs: 2 },
    );
    const qk = ropeQK(b, qk0, nHeads + nKvHeads, hs, cos, sin, `${t}_rope`);
    const [qRot, kRot] = b.opN('Split', [qk, b.i64(`${t}_qk_split`, [dim, kvDim])], { axis: -1 }, { outputs: 2 });
    // The cache grows along the sequence axis of [1, kvH, T, hs].
    const toCache = (v: string) => b.op('Transpose', [b.op('Reshape', [v, bsnh])], { perm: [0, 2, 1, 3] });
    const keys = b.op('Concat', [pastK, toCache(kRot)], { axis: 2 });
    const values = b.op('Concat', [pastV, toCache(vNew)], { axis: 2 });
    b.output(keys, MONO_IO.presentKey(l), 'float32', ['batch_size', nKvHeads, 'total_sequence_length', hs]);
    b.output(values, MONO_IO.presentValue(l), 'float32', ['batch_size', nKvHeads, 'total_sequence_length', hs]);

    const qh = b.op('Transpose', [b.op('Reshape', [qRot, qHeads])], { perm: [1, 2, 0, 3] }); // [kvH, G, s, hs]
    const kh = b.op('Transpose', [b.op('Reshape', [keys, kvBatch])], { perm: [0, 1, 3, 2] }); // [kvH, 1, hs, T]
    const vh = b.op('Reshape', [values, kvBatch]); // [kvH, 1, T, hs]
    const scores = b.op('Mul', [b.op('MatMul', [qh, kh]), scale]);
    const probs = b.op('Softmax', [b.op('Add', [scores, maskAdd])], { axis: -1 });
    const ctx = b.op('MatMul', [probs, vh]);
    const attnOut = b.op('Reshape', [
      b.op('Transpose', [ctx], { perm: [2, 0, 1, 3] }),
      b.i64(`${t}_attn_flat`, [0, dim]),
    ]);
    const h = b.op('Add', [x, linear(b, attnOut, `${t}_wo`, w.wo, dim, dim)]);
    const hn = rmsNorm(b, h, w.rmsFfn, cfg.normEps, `${t}_rms_ffn`);
    const gateUp = linear(b, hn, `${t}_w13`, stackRows(w.w1, w.w3), 2 * hiddenDim, dim);
    const [gate, up] = b.opN(
      'Split',
      [gateUp, b.i64(`${t}_w13_split`, [hiddenDim, hiddenDim])],
      { axis: -1 },
      { outputs: 2 },
    );
    const act = b.op('Mul', [b.op('Mul', [gate, b.op('Sigmoid', [gate])]), up]);
    x = b.op('Add', [h, linear(b, act, `${t}_w2`, w.w2, dim, hiddenDim)]);
  }

  // Only the last k rows go through the classifier (k = 0: all), as optimum's num_logits_to_keep.
  const start = b.op('Where', [
    b.op('Equal', [keepN, b.tensor('zero_k', 'int64', [], BigInt64Array.of(0n))]),
    b.tensor('zero_s', 'int64', [], BigInt64Array.of(0n)),
    b.op('Neg', [keepN]),
  ]);
  const kept = b.op('Slice', [
    x,
    b.op('Reshape', [start, b.i64('one_dim', [1])]),
    b.i64('slice_end', [Number.MAX_SAFE_INTEGER]),
    b.i64('slice_axes', [0]),
  ]);
  const normed = rmsNorm(b, kept, ck.rmsFinal, cfg.normEps, 'rms_final');
  const logits = linear(b, normed, 'wcls', ck.wcls, vocabSize, dim);
  b.output(b.op('Reshape', [logits, b.i64('logits_shape', [1, -1, vocabSize])]), MONO_IO.logits, 'float32', [
    'batch_size',
    'num_logits',
    vocabSize,
  ]);
  return b.toBytes();
}

/** The files transformers.js reads for a llama decoder (besides onnx/model.onnx). */
export function transformersConfig(ck: Checkpoint, bosId = 1, eosId = 2): { config: object; generationConfig: object } {
  const c = ck.config;
  return {
    config: {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      hidden_size: c.dim,
      intermediate_size: c.hiddenDim,
      num_hidden_layers: c.nLayers,
      num_attention_heads: c.nHeads,
      num_key_value_heads: c.nKvHeads,
      head_dim: c.headSize,
      vocab_size: c.vocabSize,
      max_position_embeddings: c.seqLen,
      rms_norm_eps: c.normEps,
      rope_theta: c.ropeTheta,
      tie_word_embeddings: ck.sharedClassifier,
      bos_token_id: bosId,
      eos_token_id: eosId,
      torch_dtype: 'float32',
      use_cache: true,
    },
    generationConfig: { bos_token_id: bosId, eos_token_id: eosId, do_sample: false, max_length: c.seqLen },
  };
}

/**
 * Drives a monolithic session the way a transformers.js-style runtime does: the whole cache goes in
 * on every call and comes back one position longer.
 */
export class MonolithicDecoder {
  /** per layer: [1, kvH, T, hs] key and value caches as the graph returned them */
  private past: { k: HostTensor; v: HostTensor }[] = [];
  length = 0;

  constructor(
    private readonly session: GraphSession,
    private readonly cfg: ModelConfig,
  ) {
    this.reset();
  }

  reset(): void {
    const empty = (): HostTensor => ({ data: new Float32Array(0), dims: [1, this.cfg.nKvHeads, 0, this.cfg.headSize] });
    this.past = Array.from({ length: this.cfg.nLayers }, () => ({ k: empty(), v: empty() }));
    this.length = 0;
  }

  /** Appends `tokens` and returns the logits of the last one ([vocab]). */
  async step(tokens: readonly number[]): Promise<Float32Array> {
    const s = tokens.length;
    const total = this.length + s;
    const feeds: Record<string, HostTensor> = {
      [MONO_IO.ids]: { data: BigInt64Array.from(tokens, (t) => BigInt(t)), dims: [1, s] },
      [MONO_IO.mask]: { data: new BigInt64Array(total).fill(1n), dims: [1, total] },
      [MONO_IO.positions]: { data: BigInt64Array.from({ length: s }, (_, i) => BigInt(this.length + i)), dims: [1, s] },
      [MONO_IO.keep]: { data: BigInt64Array.of(1n), dims: [] },
    };
    this.past.forEach((p, l) => {
      feeds[MONO_IO.pastKey(l)] = p.k;
      feeds[MONO_IO.pastValue(l)] = p.v;
    });
    const out = await this.session.run(feeds);
    this.past = this.past.map((_, l) => ({ k: out[MONO_IO.presentKey(l)], v: out[MONO_IO.presentValue(l)] }));
    this.length = total;
    return out[MONO_IO.logits].data as Float32Array;
  }
}

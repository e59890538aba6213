/**
 * A deliberately plain port of llama2.c run.c's forward(), used as the ground truth that the real
 * engines are compared against. Keep it boring: no fusion, no caching tricks, same loop order.
 */
import type { Checkpoint } from '../../src/model/checkpoint.js';
import type { Tokenizer } from '../../src/model/tokenizer.js';
import { argmax } from '../../src/engine/logits.js';

function rmsnorm(out: Float32Array, x: Float32Array, weight: Float32Array, eps: number): void {
  let ss = 0;
  for (let j = 0; j < x.length; j++) ss += x[j] * x[j];
  ss /= x.length;
  ss += eps;
  ss = 1 / Math.sqrt(ss);
  for (let j = 0; j < x.length; j++) out[j] = weight[j] * (ss * x[j]);
}

/** out[d] = W[d, :] · x for W of shape [d, n] (out, in) row-major. */
function matmul(out: Float32Array, x: Float32Array, w: Float32Array, n: number, d: number): void {
  for (let i = 0; i < d; i++) {
    let val = 0;
    const row = i * n;
    for (let j = 0; j < n; j++) val += w[row + j] * x[j];
    out[i] = val;
  }
}

function softmax(x: Float32Array, size: number): void {
  let max = x[0];
  for (let i = 1; i < size; i++) if (x[i] > max) max = x[i];
  let sum = 0;
  for (let i = 0; i < size; i++) {
    x[i] = Math.exp(x[i] - max);
    sum += x[i];
  }
  for (let i = 0; i < size; i++) x[i] /= sum;
}

export class ReferenceModel {
  readonly ck: Checkpoint;
  /** [nLayers][seqLen * kvDim] */
  private readonly keyCache: Float32Array[];
  /** [nLayers][seqLen * kvDim] */
  private readonly valueCache: Float32Array[];
  // Activation scratch, named as in run.c's RunState.
  private readonly x: Float32Array; // [dim]
  private readonly xb: Float32Array; // [dim]
  private readonly xb2: Float32Array; // [dim]
  private readonly hb: Float32Array; // [hiddenDim]
  private readonly hb2: Float32Array; // [hiddenDim]
  private readonly q: Float32Array; // [dim]
  private readonly k: Float32Array; // [kvDim]
  private readonly v: Float32Array; // [kvDim]
  private readonly att: Float32Array; // [nHeads, seqLen]
  private readonly logits: Float32Array; // [vocabSize]

  constructor(ck: Checkpoint) {
    this.ck = ck;
    const c = ck.config;
    this.keyCache = ck.layers.map(() => new Float32Array(c.seqLen * c.kvDim));
    this.valueCache = ck.layers.map(() => new Float32Array(c.seqLen * c.kvDim));
    this.x = new Float32Array(c.dim);
    this.xb = new Float32Array(c.dim);
    this.xb2 = new Float32Array(c.dim);
    this.hb = new Float32Array(c.hiddenDim);
    this.hb2 = new Float32Array(c.hiddenDim);
    this.q = new Float32Array(c.dim);
    this.k = new Float32Array(c.kvDim);
    this.v = new Float32Array(c.kvDim);
    this.att = new Float32Array(c.nHeads * c.seqLen);
    this.logits = new Float32Array(c.vocabSize);
  }

  reset(): void {
    for (const kc of this.keyCache) kc.fill(0);
    for (const vc of this.valueCache) vc.fill(0);
  }

  /** Logits [vocabSize] for `token` at position `pos`; returns a fresh copy. */
  forward(token: number, pos: number): Float32Array {
    const { ck } = this;
    const c = ck.config;
    const { dim, hiddenDim, kvDim, headSize, nHeads, seqLen } = c;
    if (!(token >= 0 && token < c.vocabSize)) throw new RangeError(`token ${token} out of range`);
    if (!(pos >= 0 && pos < seqLen)) throw new RangeError(`pos ${pos} outside [0, ${seqLen})`);
    const kvMul = nHeads / c.nKvHeads;
    const { x, xb, xb2, hb, hb2, q, k, v, att } = this;

    x.set(ck.tokenEmbedding.subarray(token * dim, (token + 1) * dim));

    for (let l = 0; l < c.nLayers; l++) {
      const w = ck.layers[l];
      const keyCache = this.keyCache[l];
      const valueCache = this.valueCache[l];

      rmsnorm(xb, x, w.rmsAtt, c.normEps);
      matmul(q, xb, w.wq, dim, dim);
      matmul(k, xb, w.wk, dim, kvDim);
      matmul(v, xb, w.wv, dim, kvDim);

      // RoPE: rotate each adjacent pair (i, i+1) of q, and of k while i < kvDim.
      for (let i = 0; i < dim; i += 2) {
        const headDim = i % headSize;
        const freq = 1 / Math.pow(c.ropeTheta, headDim / headSize);
        const val = pos * freq;
        const fcr = Math.cos(val);
        const fci = Math.sin(val);
        const rotn = i < kvDim ? 2 : 1;
        for (let r = 0; r < rotn; r++) {
          const vec = r === 0 ? q : k;
          const v0 = vec[i];
          const v1 = vec[i + 1];
          vec[i] = v0 * fcr - v1 * fci;
          vec[i + 1] = v0 * fci + v1 * fcr;
        }
      }

      keyCache.set(k, pos * kvDim);
      valueCache.set(v, pos * kvDim);

      for (let h = 0; h < nHeads; h++) {
        const qOff = h * headSize;
        const attOff = h * seqLen;
        // Grouped-query attention: kvMul consecutive query heads share one kv head.
        const kvOff = Math.floor(h / kvMul) * headSize;
        for (let t = 0; t <= pos; t++) {
          const kOff = t * kvDim + kvOff;
          let score = 0;
          for (let i = 0; i < headSize; i++) score += q[qOff + i] * keyCache[kOff + i];
          att[attOff + t] = score / Math.sqrt(headSize);
        }
        softmax(att.subarray(attOff, attOff + pos + 1), pos + 1);
        for (let i = 0; i < headSize; i++) xb[qOff + i] = 0;
        for (let t = 0; t <= pos; t++) {
          const vOff = t * kvDim + kvOff;
          const a = att[attOff + t];
          for (let i = 0; i < headSize; i++) xb[qOff + i] += a * valueCache[vOff + i];
        }
      }

      matmul(xb2, xb, w.wo, dim, dim);
      for (let i = 0; i < dim; i++) x[i] += xb2[i];

      rmsnorm(xb, x, w.rmsFfn, c.normEps);
      matmul(hb, xb, w.w1, dim, hiddenDim);
      matmul(hb2, xb, w.w3, dim, hiddenDim);
      // SwiGLU: silu(w1 x) * (w3 x)
      for (let i = 0; i < hiddenDim; i++) {
        let val = hb[i];
        val *= 1 / (1 + Math.exp(-val));
        val *= hb2[i];
        hb[i] = val;
      }
      matmul(xb, hb, w.w2, hiddenDim, dim);
      for (let i = 0; i < dim; i++) x[i] += xb[i];
    }

    rmsnorm(x, x, ck.rmsFinal, c.normEps);
    matmul(this.logits, x, ck.wcls, dim, c.vocabSize);
    return this.logits.slice();
  }
}

/**
 * run.c's generate() with temperature 0 and an empty prompt: start from BOS at pos 0 and stop when
 * the model emits BOS or `steps` forward passes are done. Returns the generated ids (without the
 * leading BOS and without the terminating BOS).
 */
export function greedyGenerate(model: ReferenceModel, tokenizer: Tokenizer, steps: number): number[] {
  model.reset();
  const out: number[] = [];
  let token = tokenizer.bosId;
  const limit = Math.min(steps, model.ck.config.seqLen);
  for (let pos = 0; pos < limit; pos++) {
    const next = argmax(model.forward(token, pos));
    if (next === tokenizer.bosId) break;
    out.push(next);
    token = next;
  }
  return out;
}

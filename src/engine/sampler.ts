import { EngineError } from './errors.js';

export interface SamplerOptions {
  /** 0 = greedy */
  temperature: number;
  /** nucleus sampling share in (0, 1]; 1 disables it */
  topP: number;
  /** keep only the k most likely tokens; 0 disables it */
  topK: number;
  seed: number;
}

export const GREEDY: SamplerOptions = { temperature: 0, topP: 1, topK: 0, seed: 0 };

const f = Math.fround;
const MASK64 = (1n << 64n) - 1n;

/**
 * llama2.c's sampler, float32 arithmetic and xorshift* RNG included, so that a seed here gives the
 * same tokens as `./run -t T -p P -s SEED` (the published stories260K sample checks this).
 * Top-k is our addition and applies before top-p when set.
 */
export class Sampler {
  private state: bigint;

  constructor(readonly opts: SamplerOptions) {
    const { temperature, topP, topK, seed } = opts;
    if (!(temperature >= 0) || !Number.isFinite(temperature)) throw new EngineError(`temperature ${temperature} must be a finite number >= 0`, 'invalid_sampler', 'temperature');
    if (!(topP > 0 && topP <= 1)) throw new EngineError(`top_p ${topP} must be in (0, 1]`, 'invalid_sampler', 'top_p');
    if (!Number.isInteger(topK) || topK < 0) throw new EngineError(`top_k ${topK} must be an integer >= 0`, 'invalid_sampler', 'top_k');
    if (!Number.isSafeInteger(seed) || seed < 0) throw new EngineError(`seed ${seed} must be a non-negative integer`, 'invalid_sampler', 'seed');
    // llama2.c seeds its state directly; a zero state would make xorshift emit zeros forever.
    this.state = BigInt(seed) === 0n ? 0x9e3779b97f4a7c15n : BigInt(seed) & MASK64;
  }

  private randomU32(): number {
    let s = this.state;
    s ^= s >> 12n;
    s ^= (s << 25n) & MASK64;
    s ^= s >> 27n;
    this.state = s;
    return Number(((s * 0x2545f4914f6cdd1dn) & MASK64) >> 32n);
  }

  private randomF32(): number {
    return f((this.randomU32() >>> 8) / 16777216);
  }

  sample(logits: Float32Array): number {
    const { temperature, topP, topK } = this.opts;
    const n = logits.length;
    if (temperature === 0) return argmax(logits);
    const probs = new Float32Array(n);
    let max = -Infinity;
    for (let i = 0; i < n; i++) {
      probs[i] = f(logits[i] / temperature);
      if (probs[i] > max) max = probs[i];
    }
    // A temperature so small (about 1e-38) that logits / T leaves float32's range: the largest is ±inf, softmax
    // would be inf - inf = NaN and sample the last token every time. Its limit is greedy, so decode greedily.
    if (!Number.isFinite(max)) return argmax(logits);
    let sum = 0;
    for (let i = 0; i < n; i++) {
      probs[i] = f(Math.exp(f(probs[i] - max)));
      sum = f(sum + probs[i]);
    }
    for (let i = 0; i < n; i++) probs[i] = f(probs[i] / sum);
    if (topK > 0 && topK < n) {
      const kth = Float32Array.from(probs).sort().reverse()[topK - 1];
      let kept = 0;
      for (let i = 0; i < n; i++) if (probs[i] < kth || (probs[i] === kth && kept >= topK)) probs[i] = 0; else kept++;
      let s = 0;
      for (let i = 0; i < n; i++) s = f(s + probs[i]);
      for (let i = 0; i < n; i++) probs[i] = f(probs[i] / s);
    }
    const coin = this.randomF32();
    return topP <= 0 || topP >= 1 ? sampleMult(probs, coin) : sampleTopP(probs, topP, coin);
  }
}

function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

function sampleMult(probs: Float32Array, coin: number): number {
  let cdf = 0;
  for (let i = 0; i < probs.length; i++) {
    cdf = f(cdf + probs[i]);
    if (coin < cdf) return i;
  }
  return probs.length - 1;
}

function sampleTopP(probs: Float32Array, topP: number, coin: number): number {
  const n = probs.length;
  // Tokens below this share cannot be in the nucleus; dropping them first keeps the sort small.
  const cutoff = f(f(1 - topP) / (n - 1));
  const cand: number[] = [];
  for (let i = 0; i < n; i++) if (probs[i] >= cutoff) cand.push(i);
  cand.sort((a, b) => probs[b] - probs[a]);
  let cum = 0;
  let lastIdx = cand.length - 1;
  for (let j = 0; j < cand.length; j++) {
    cum = f(cum + probs[cand[j]]);
    if (cum > topP) {
      lastIdx = j;
      break;
    }
  }
  const r = f(coin * cum);
  let cdf = 0;
  for (let j = 0; j <= lastIdx; j++) {
    cdf = f(cdf + probs[cand[j]]);
    if (r < cdf) return cand[j];
  }
  return cand[lastIdx];
}

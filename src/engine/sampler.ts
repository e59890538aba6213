import { EngineError } from './errors.js';
import { argmax } from './logits.js';

export interface SamplerOptions {
  /** 0 = greedy */
  temperature: number;
  /** nucleus sampling share in (0, 1]; 1 disables it */
  topP: number;
  /** keep only the k most likely tokens; 0 disables it */
  topK: number;
  seed: number;
  /** OpenAI's frequency_penalty in [-2, 2]; 0 (the default) is off */
  frequencyPenalty?: number;
  /** OpenAI's presence_penalty in [-2, 2]; 0 (the default) is off */
  presencePenalty?: number;
  /** llama.cpp's repeat penalty, > 0; 1 (the default) is off */
  repetitionPenalty?: number;
  /**
   * The tokens before the first generated one that repetitionPenalty looks at (the prompt's last
   * ones): llama.cpp's server feeds the prompt to its sampler too, so its window spans both.
   */
  penaltyContext?: readonly number[];
}

export const GREEDY: SamplerOptions = { temperature: 0, topP: 1, topK: 0, seed: 0 };

/** llama.cpp's default penalty_last_n: repetition_penalty looks at the last 64 tokens, prompt included. */
export const REPETITION_WINDOW = 64;

/**
 * The penalties on a copy of `logits` (the model's own stay untouched for logprobs), each as its
 * author defines it:
 *  - repetition (llama.cpp's llama_sampler_penalties): every distinct token among the last
 *    REPETITION_WINDOW of `window` has its logit divided by `repetition` when positive, multiplied
 *    when not, once whatever its count;
 *  - frequency and presence (OpenAI's): logit[j] -= count[j] * frequency + (count[j] > 0) * presence,
 *    counted over `generated`, the tokens generated so far.
 * Applied in that order, as llama.cpp applies its repeat, then frequency and presence, penalties.
 */
export function penalizeLogits(
  logits: Float32Array,
  p: { frequency: number; presence: number; repetition: number },
  generated: readonly number[],
  window: readonly number[],
): Float32Array {
  const out = Float32Array.from(logits);
  if (p.repetition !== 1) {
    for (const t of new Set(window.slice(-REPETITION_WINDOW)))
      out[t] = out[t] <= 0 ? out[t] * p.repetition : out[t] / p.repetition;
  }
  if (p.frequency !== 0 || p.presence !== 0) {
    const counts = new Map<number, number>();
    for (const t of generated) counts.set(t, (counts.get(t) ?? 0) + 1);
    for (const [t, c] of counts) out[t] -= c * p.frequency + p.presence;
  }
  return out;
}

const f = Math.fround;
const MASK64 = (1n << 64n) - 1n;

/**
 * llama2.c's sampler, float32 arithmetic and xorshift* RNG included, so that a seed here gives the
 * same tokens as `./run -t T -p P -s SEED` (the published stories260K sample checks this).
 * Top-k is our addition and applies before top-p when set.
 */
export class Sampler {
  private state: bigint;
  private readonly penalties: { frequency: number; presence: number; repetition: number } | null;
  /** every token this sampler returned, in order: what the penalties count */
  private readonly generated: number[] = [];
  /** the prompt's last tokens, then the generated ones: repetition's window */
  private readonly window: number[];

  constructor(readonly opts: SamplerOptions) {
    const { temperature, topP, topK, seed, frequencyPenalty = 0, presencePenalty = 0, repetitionPenalty = 1 } = opts;
    if (!(temperature >= 0) || !Number.isFinite(temperature))
      throw new EngineError(
        `temperature ${temperature} must be a finite number >= 0`,
        'invalid_sampler',
        'temperature',
      );
    if (!(topP > 0 && topP <= 1)) throw new EngineError(`top_p ${topP} must be in (0, 1]`, 'invalid_sampler', 'top_p');
    if (!Number.isInteger(topK) || topK < 0)
      throw new EngineError(`top_k ${topK} must be an integer >= 0`, 'invalid_sampler', 'top_k');
    if (!Number.isSafeInteger(seed) || seed < 0)
      throw new EngineError(`seed ${seed} must be a non-negative integer`, 'invalid_sampler', 'seed');
    if (!(Math.abs(frequencyPenalty) <= 2))
      throw new EngineError(
        `frequency_penalty ${frequencyPenalty} must be in [-2, 2]`,
        'invalid_sampler',
        'frequency_penalty',
      );
    if (!(Math.abs(presencePenalty) <= 2))
      throw new EngineError(
        `presence_penalty ${presencePenalty} must be in [-2, 2]`,
        'invalid_sampler',
        'presence_penalty',
      );
    if (!(repetitionPenalty > 0) || !Number.isFinite(repetitionPenalty))
      throw new EngineError(
        `repetition_penalty ${repetitionPenalty} must be a finite number > 0`,
        'invalid_sampler',
        'repetition_penalty',
      );
    const off = frequencyPenalty === 0 && presencePenalty === 0 && repetitionPenalty === 1;
    this.penalties = off
      ? null
      : { frequency: frequencyPenalty, presence: presencePenalty, repetition: repetitionPenalty };
    this.window = [...(opts.penaltyContext ?? []).slice(-REPETITION_WINDOW)];
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

  /** The next token; the sampler remembers it, since the penalties count what it returned before. */
  sample(logits: Float32Array): number {
    if (!this.penalties) return this.draw(logits);
    const next = this.draw(penalizeLogits(logits, this.penalties, this.generated, this.window));
    this.generated.push(next);
    this.window.push(next);
    if (this.window.length > REPETITION_WINDOW) this.window.shift();
    return next;
  }

  private draw(logits: Float32Array): number {
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
      for (let i = 0; i < n; i++)
        if (probs[i] < kth || (probs[i] === kth && kept >= topK)) probs[i] = 0;
        else kept++;
      let s = 0;
      for (let i = 0; i < n; i++) s = f(s + probs[i]);
      for (let i = 0; i < n; i++) probs[i] = f(probs[i] / s);
    }
    const coin = this.randomF32();
    return topP <= 0 || topP >= 1 ? sampleMult(probs, coin) : sampleTopP(probs, topP, coin);
  }
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

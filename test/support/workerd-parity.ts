/** Generations run in Node by the global setup and again inside workerd; both must give the same tokens. */
export interface ParityCase {
  name: string;
  prompt: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  seed: number;
  /** schedule spec, or null for dense */
  schedule: string | null;
}

export const PARITY_CASES: ParityCase[] = [
  { name: 'greedy from BOS, dense', prompt: '', maxTokens: 200, temperature: 0, topP: 1, seed: 0, schedule: null },
  {
    name: 'seeded sampling, lazy, long prompt',
    prompt: 'Once upon a time there was a dog named Max. Max liked to run in the park with his friend Sam. '.repeat(6),
    maxTokens: 64,
    temperature: 0.8,
    topP: 0.9,
    seed: 1234,
    schedule: 'bos,1:0.5,3:0.5',
  },
];

export interface ParityResult {
  name: string;
  tokens: number[];
  computedPerLayer: number[];
}

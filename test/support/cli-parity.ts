/**
 * `npm run generate -- ... --json` runs in the global setup (Node, the real CLI in a child process,
 * see cli-runner.ts) for each case below; the workerd tests send the same case over HTTP and must
 * get the same result. Nothing here touches the HTTP code, so the comparison cannot agree with itself
 * by construction. This module is imported inside workerd too, so it stays free of Node APIs.
 */

export interface CliCase {
  name: string;
  prompt: string;
  maxTokens: number;
  temperature: number;
  topP?: number;
  seed?: number;
  stop?: string[];
  /** 'off' = dense; otherwise LazyLLM with `schedule` or the default schedule */
  lazy: 'on' | 'off';
  schedule?: string;
}

export const CLI_CASES: CliCase[] = [
  {
    name: 'greedy, default lazy schedule',
    prompt: 'Once upon a time, there was a little girl named Lily.',
    maxTokens: 80,
    temperature: 0,
    lazy: 'on',
  },
  {
    name: 'greedy, dense, stop strings',
    prompt: 'The cat sat on the mat.',
    maxTokens: 120,
    temperature: 0,
    lazy: 'off',
    stop: ['park', 'happy'],
  },
  {
    name: 'seeded top-p, explicit schedule, long prompt',
    prompt: 'Tom and his sister Mia found a red ball in the garden. They played with it all day and laughed. '.repeat(
      8,
    ),
    maxTokens: 64,
    temperature: 0.8,
    topP: 0.9,
    seed: 7,
    lazy: 'on',
    schedule: 'bos,2:0.6,4:0.5',
  },
];

/** The CLI's --json output. */
export interface CliResult {
  name: string;
  text: string;
  tokens: number[];
  prompt_tokens: number;
  finish_reason: string;
  stats: { schedule: string; computed_per_layer: number[] };
}

declare module 'vitest' {
  export interface ProvidedContext {
    cliParity: CliResult[];
  }
}

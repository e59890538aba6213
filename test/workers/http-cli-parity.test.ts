import { describe, expect, inject, it } from 'vitest';
import { CLI_CASES, type CliCase } from '../support/cli-parity.js';
import { MODEL, post } from '../support/http.js';

/** The HTTP request that asks for what the CLI was asked for. */
function requestFor(c: CliCase): object {
  return {
    model: MODEL,
    prompt: c.prompt,
    max_tokens: c.maxTokens,
    temperature: c.temperature,
    ...(c.topP !== undefined && { top_p: c.topP }),
    ...(c.seed !== undefined && { seed: c.seed }),
    ...(c.stop && { stop: c.stop }),
    lazy: c.lazy === 'off' ? { enabled: false } : c.schedule ? { schedule: c.schedule } : {},
  };
}

describe('HTTP gives what `npm run generate -- --json` gives for the same prompt and options', () => {
  it.each(CLI_CASES.map((c) => [c.name, c] as const))('%s', async (name, c) => {
    const cli = inject('cliParity').find((r) => r.name === name)!;
    expect(cli.tokens.length).toBeGreaterThan(3);
    const res = await post('/v1/completions', requestFor(c));
    expect(res.status).toBe(200);
    const body = (await res.json()) as {
      choices: { text: string; finish_reason: string }[];
      usage: { prompt_tokens: number; completion_tokens: number };
      lazy_stats: { schedule: string; computed_per_layer: number[] };
    };
    expect(body.choices[0].text).toBe(cli.text);
    expect(body.choices[0].finish_reason).toBe(cli.finish_reason);
    expect(body.usage.prompt_tokens).toBe(cli.prompt_tokens);
    expect(body.usage.completion_tokens).toBe(cli.tokens.length);
    expect(body.lazy_stats.schedule).toBe(cli.stats.schedule);
    expect(body.lazy_stats.computed_per_layer).toEqual(cli.stats.computed_per_layer);
  });
});

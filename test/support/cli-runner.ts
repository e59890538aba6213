/** Node side of cli-parity.ts: runs the generate CLI for each case (global setup only). */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { CLI_CASES, type CliCase, type CliResult } from './cli-parity.js';

export function cliArgs(c: CliCase): string[] {
  const args = [
    '--prompt',
    c.prompt,
    '--max-tokens',
    String(c.maxTokens),
    '--temperature',
    String(c.temperature),
    '--lazy',
    c.lazy,
    '--json',
  ];
  if (c.topP !== undefined) args.push('--top-p', String(c.topP));
  if (c.seed !== undefined) args.push('--seed', String(c.seed));
  if (c.schedule !== undefined) args.push('--schedule', c.schedule);
  for (const s of c.stop ?? []) args.push('--stop', s);
  return args;
}

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Runs `tsx scripts/generate.ts` (what `npm run generate` runs) once per case. */
export async function runCliCases(cases: readonly CliCase[] = CLI_CASES): Promise<CliResult[]> {
  const run = promisify(execFile);
  return Promise.all(
    cases.map(async (c) => {
      const { stdout } = await run(`${REPO_ROOT}node_modules/.bin/tsx`, ['scripts/generate.ts', ...cliArgs(c)], {
        cwd: REPO_ROOT,
        maxBuffer: 16 << 20,
      });
      return { name: c.name, ...(JSON.parse(stdout) as Omit<CliResult, 'name'>) };
    }),
  );
}

/**
 * npm run generate -- --prompt "TEXT" --max-tokens N --temperature T [--seed S] [--top-p P] [--top-k K]
 *                     [--stop S ...] [--lazy on|off] [--schedule SPEC] [--model DIR] [--json]
 * With --json, prints exactly one JSON object on stdout; everything else goes to stderr.
 */
import { parseArgs } from 'node:util';
import { SequenceState } from '../src/engine/caches.js';
import { generate } from '../src/engine/generate.js';
import { defaultSchedule, parseSchedule, validateSchedule } from '../src/engine/policy.js';
import { fail, loadModelFromDir, runMain } from './lib/node-env.js';
import { ensureDefaultShards } from './lib/shard-tasks.js';
import { encodePrompt } from '../src/model/text-tokenizer.js';

function num(name: string, v: string | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) fail(`--${name} must be a number, got "${v}"`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      prompt: { type: 'string', default: '' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      seed: { type: 'string' },
      'top-p': { type: 'string' },
      'top-k': { type: 'string' },
      stop: { type: 'string', multiple: true },
      lazy: { type: 'string', default: 'on' },
      schedule: { type: 'string' },
      model: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  if (values.lazy !== 'on' && values.lazy !== 'off') fail(`--lazy must be "on" or "off", got "${values.lazy}"`);
  const dir = values.model ?? (await ensureDefaultShards((l) => process.stderr.write(`${l}\n`)));
  const model = await loadModelFromDir(dir);
  const schedule =
    values.lazy === 'off'
      ? null
      : validateSchedule(
          values.schedule ? parseSchedule(values.schedule) : defaultSchedule(model.config.nLayers),
          model.config.nLayers,
        );
  const prompt = encodePrompt(model.tokenizer, values.prompt);
  const result = await generate(model, new SequenceState(model.config), prompt, {
    maxTokens: num('max-tokens', values['max-tokens'], 256),
    sampler: {
      temperature: num('temperature', values.temperature, 1),
      topP: num('top-p', values['top-p'], 1),
      topK: num('top-k', values['top-k'], 0),
      seed: num('seed', values.seed, 42),
    },
    stop: values.stop,
    schedule,
    onText: values.json ? undefined : (t) => void process.stdout.write(t),
  });
  if (values.json) {
    const out = {
      text: result.text,
      tokens: result.tokens,
      prompt_tokens: result.promptTokens,
      finish_reason: result.finishReason,
      stats: result.stats,
    };
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } else {
    const s = result.stats;
    process.stdout.write('\n');
    process.stderr.write(
      `[${result.finishReason}] ${s.prompt_tokens} prompt + ${s.completion_tokens} generated tokens; ` +
        `prefill ${s.prefill_ms.toFixed(1)} ms, decode ${s.decode_tokens_per_s.toFixed(1)} tok/s; schedule ${s.schedule}; ` +
        `rows per layer ${s.computed_per_layer.join('/')}\n`,
    );
  }
}

runMain(main);

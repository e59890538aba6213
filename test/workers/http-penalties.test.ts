/**
 * frequency_penalty, presence_penalty and repetition_penalty reach the sampler from every route:
 * a greedy request with them answers exactly what the engine gives with the same sampler options
 * (whose arithmetic test/node/sampler-penalties.test.ts checks against the formulas), and not what
 * it gives without them, so a penalty silently dropped on the way fails here.
 */
import { env } from 'cloudflare:workers';
import { describe, expect, it } from 'vitest';
import { SequenceState } from '../../src/engine/caches.js';
import { generate } from '../../src/engine/generate.js';
import { REPETITION_WINDOW, type SamplerOptions } from '../../src/engine/sampler.js';
import { encodePrompt } from '../../src/model/text-tokenizer.js';
import { getModel } from '../../src/worker/model-store.js';
import { MODEL, post } from '../support/http.js';

const PROMPT = 'Once upon a time, there was a little girl named Lily. She';
const MAX_TOKENS = 40;
const GREEDY = { temperature: 0, topP: 1, topK: 0, seed: 1 };

async function engineText(extra: Partial<SamplerOptions>): Promise<string> {
  const model = await getModel(env);
  const ids = encodePrompt(model.tokenizer, PROMPT);
  const sampler = {
    ...GREEDY,
    ...extra,
    ...(extra.repetitionPenalty ? { penaltyContext: ids.slice(-REPETITION_WINDOW) } : {}),
  };
  return (
    await generate(model, new SequenceState(model.config), ids, { maxTokens: MAX_TOKENS, sampler, schedule: null })
  ).text;
}

async function completionText(extra: object): Promise<string> {
  const res = await post('/v1/completions', {
    model: MODEL,
    prompt: PROMPT,
    max_tokens: MAX_TOKENS,
    temperature: 0,
    lazy: { enabled: false },
    ...extra,
  });
  const body = await res.text();
  expect(res.status, body).toBe(200);
  return (JSON.parse(body) as { choices: { text: string }[] }).choices[0].text;
}

describe('penalties through HTTP', () => {
  it.each<[string, object, Partial<SamplerOptions>]>([
    ['frequency_penalty', { frequency_penalty: 1.5 }, { frequencyPenalty: 1.5 }],
    ['presence_penalty', { presence_penalty: 2 }, { presencePenalty: 2 }],
    ['repetition_penalty (the prompt counts too)', { repetition_penalty: 1.8 }, { repetitionPenalty: 1.8 }],
    [
      'all three',
      { frequency_penalty: 0.5, presence_penalty: 0.5, repetition_penalty: 1.3 },
      { frequencyPenalty: 0.5, presencePenalty: 0.5, repetitionPenalty: 1.3 },
    ],
  ])('/v1/completions with %s answers what the engine gives with it', async (_name, body, sampler) => {
    const [http, engine, plain] = await Promise.all([completionText(body), engineText(sampler), engineText({})]);
    expect(http).toBe(engine);
    expect(http).not.toBe(plain);
  });

  it('repetition_penalty without its prompt window would answer differently: the prompt is in it', async () => {
    const model = await getModel(env);
    const ids = encodePrompt(model.tokenizer, PROMPT);
    const noContext = (
      await generate(model, new SequenceState(model.config), ids, {
        maxTokens: MAX_TOKENS,
        sampler: { ...GREEDY, repetitionPenalty: 1.8 },
        schedule: null,
      })
    ).text;
    expect(await completionText({ repetition_penalty: 1.8 })).not.toBe(noContext);
  });

  it('a chat session turn applies them as /v1/chat/completions does', async () => {
    const messages = [{ role: 'user', content: 'Tell me a story about a dog.' }];
    const opts = {
      max_tokens: 30,
      temperature: 0,
      frequency_penalty: 1,
      repetition_penalty: 1.5,
      lazy: { enabled: false },
    };
    const chat = (await (await post('/v1/chat/completions', { model: MODEL, messages, ...opts })).json()) as {
      choices: { message: { content: string } }[];
    };
    const plain = (await (
      await post('/v1/chat/completions', {
        model: MODEL,
        messages,
        ...opts,
        frequency_penalty: 0,
        repetition_penalty: 1,
      })
    ).json()) as typeof chat;
    const { id } = (await (await post('/v1/sessions', {})).json()) as { id: string };
    const res = await post(`/v1/sessions/${id}/messages`, { content: messages[0].content, ...opts });
    const turn = (await res.json()) as typeof chat;
    expect(res.status).toBe(200);
    expect(turn.choices[0].message.content).toBe(chat.choices[0].message.content);
    expect(chat.choices[0].message.content).not.toBe(plain.choices[0].message.content);
  });
});

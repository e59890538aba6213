/** Long prompts from one-story-a-line text, the way stories260K was trained: BOS before each story. */

export interface Encoder {
  encode(text: string, opts?: { bos?: boolean }): number[];
}

/**
 * The evaluation stream of a text file for a model: for a model trained with BOS (llama2.c), BOS +
 * story for each line; for one without (SmolLM2's GGUF), the whole text as one plain token stream.
 */
export function evalStream(tok: Encoder & { addBos: boolean }, text: string): number[] {
  if (!tok.addBos) return tok.encode(text);
  return storyStream(
    tok,
    text.split('\n').filter((l) => l.trim().length > 0),
  );
}

/** The text as one token stream: BOS + story, BOS + story, ... */
export function storyStream(tok: Encoder, stories: readonly string[]): number[] {
  return stories.flatMap((s) => tok.encode(s, { bos: true }));
}

/**
 * `count` prompts of exactly `length` tokens, each followed by the `follow` tokens that come next
 * in the stream (for teacher-forced perplexity), at evenly spread offsets. Each prompt starts with
 * BOS, as every training sequence did (bosId null: a model without BOS, windows as they fall). A
 * stream too short for one window is repeated.
 */
export function promptWindows(
  stream: readonly number[],
  length: number,
  follow: number,
  count: number,
  bosId: number | null = 1,
): { prompt: number[]; next: number[] }[] {
  const need = length + follow;
  let src = [...stream];
  while (src.length < need + 1) src = src.concat(stream);
  const span = src.length - need;
  return Array.from({ length: count }, (_, k) => {
    const s = Math.floor((k * span) / count);
    const prompt = src.slice(s, s + length);
    if (bosId !== null) prompt[0] = bosId;
    return { prompt, next: src.slice(s + length, s + need) };
  });
}

/** Exactly n tokens of the text's evaluation stream, repeating it as needed (for measurements that depend on the count, not the words). */
export function streamOfLength(tok: Encoder & { addBos: boolean }, text: string, n: number): number[] {
  const stream = evalStream(tok, text);
  if (stream.length === 0) throw new Error('the text holds no tokens');
  const out: number[] = [];
  while (out.length < n) out.push(...stream.slice(0, n - out.length));
  return out;
}

/**
 * What the engine, the CLI and the Worker need of a tokenizer, whatever its kind: llama2.c's scored
 * SentencePiece pieces (src/model/tokenizer.ts) or byte-level BPE read from a GGUF
 * (src/model/bpe-tokenizer.ts). Nothing outside src/model knows which one it holds.
 */

export interface EncodeOptions {
  /** prepend BOS; callers pass the model's own default, `addBos` */
  bos?: boolean;
  eos?: boolean;
}

export interface StreamingDecoder {
  /** Text that became complete with this token; "" while a multi-byte character is still open. */
  push(token: number): string;
  /** Whatever is left (an incomplete trailing sequence becomes U+FFFD). */
  flush(): string;
}

export interface TextTokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  /** Whether the model expects prompts to start with BOS (llama2.c: yes; SmolLM2's GGUF: no). */
  readonly addBos: boolean;
  /** Ids that end a generation: EOS and every end-of-turn marker (llama2.c: BOS too, how a story ends). */
  readonly endIds: ReadonlySet<number>;
  /** Control tokens written in the text (`<|im_start|>`) encode to their single ids. */
  encode(text: string, opts?: EncodeOptions): number[];
  decode(tokens: number[]): string;
  /** `prev`: the token before the first one pushed (decoding may depend on it, e.g. a leading space). */
  createDecoder(opts?: { prev?: number }): StreamingDecoder;
}

/** A prompt as the model expects it: with BOS exactly when the model's tokenizer asks for one. */
export function encodePrompt(tok: TextTokenizer, text: string): number[] {
  return tok.encode(text, { bos: tok.addBos });
}

/**
 * The tokens of `prompt` (= encodePrompt(tok, text)) that hold the characters [charFrom, charTo) of
 * `text`, as [from, to) token indices: a prefix of the text encodes to a prefix of its tokens
 * wherever the cut falls between two pre-tokenized words, which it does before and after a
 * paragraph and at control tokens. Where a cut splits a token, that token counts as inside.
 */
export function tokenSpanOf(
  tok: TextTokenizer,
  text: string,
  prompt: readonly number[],
  charFrom: number,
  charTo: number,
): { from: number; to: number } {
  const boundary = (c: number, inside: 'after' | 'before'): number => {
    const head = encodePrompt(tok, text.slice(0, c));
    let k = 0;
    while (k < head.length && k < prompt.length && head[k] === prompt[k]) k++;
    // k === head.length: a clean cut; else token k straddles it and belongs to the span.
    return k === head.length || inside === 'after' ? k : k + 1;
  };
  const from = boundary(charFrom, 'after');
  const to = Math.max(from + 1, Math.min(prompt.length, boundary(charTo, 'before')));
  return { from, to };
}

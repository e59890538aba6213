import { renderChatTemplate } from './chat-template.js';
import type { Manifest } from './manifest.js';
import { encodePrompt, tokenSpanOf, type TextTokenizer } from './text-tokenizer.js';
import type { TokenSpan } from '../engine/policy.js';

export type ChatTemplate = Manifest['chatTemplate'];

/** A chat message as OpenAI's API sends it ("developer" is its newer name for "system"); the HTTP schema checks it. */
export interface ChatMessage {
  role: 'system' | 'developer' | 'user' | 'assistant';
  content: string | { type: 'text'; text: string }[];
  name?: string;
}

/** A message's text: a string, or its text parts joined without separator (as OpenAI does). */
export function messageText(m: ChatMessage): string {
  return typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join('');
}

/**
 * Renders chat messages into one prompt string with the model manifest's template: each message
 * becomes its role's template with `{content}` replaced by the message text, in order, followed by
 * the generation prompt. "developer" uses the system template. The caller encodes the result with
 * BOS, like any other prompt. For a base model such as stories260K the template is plain
 * (`{content}\n` for every role, empty generation prompt): the conversation is simply the text so
 * far, one message per line, and the model continues it.
 */
export function renderChat(template: ChatTemplate, messages: readonly ChatMessage[]): string {
  if ('format' in template) {
    // The model's own template (a GGUF's tokenizer.chat_template); "developer" is OpenAI's newer name for system.
    const msgs = messages.map((m) => ({ role: m.role === 'developer' ? 'system' : m.role, content: messageText(m) }));
    return renderChatTemplate(template.template, msgs, {
      bosToken: template.bosToken,
      eosToken: template.eosToken,
      addGenerationPrompt: true,
    });
  }
  let out = '';
  for (const m of messages) {
    const role = m.role === 'developer' ? 'system' : m.role;
    // split/join rather than replace(): message text must never be read as a replacement pattern ("$&").
    out += template[role].split('{content}').join(messageText(m));
  }
  return out + template.generationPrompt;
}

/**
 * The question of a conversation: the last paragraph (the text after the last blank line, trimmed)
 * of its final user message. A long-context request puts the document first and asks at the end,
 * in one message or two; the question's attention ranks the document for LazyLLM (signal:query).
 */
export function questionText(messages: readonly ChatMessage[]): { message: number; text: string } | null {
  for (let m = messages.length - 1; m >= 0; m--) {
    if (messages[m].role !== 'user') continue;
    const content = messageText(messages[m]);
    const text = content.slice(content.search(/\n\s*\n(?![\s\S]*\n\s*\n)/) + 1).trim();
    return text ? { message: m, text } : null;
  }
  return null;
}

/** A private-use character no tokenizer merges with its neighbours' words, and no message holds twice by accident. */
const MARK = '\u{F8FF}';

/**
 * A chat request as prompt tokens, with the question's token span (questionText) when it has one.
 * The span is exact: the conversation is rendered once more with a mark in front of the question,
 * and the mark's place (the same text without it) is where the question starts.
 */
export function encodeChat(
  tok: TextTokenizer,
  template: ChatTemplate,
  messages: readonly ChatMessage[],
): { prompt: number[]; question: TokenSpan | null } {
  const text = renderChat(template, messages);
  const prompt = encodePrompt(tok, text);
  const q = questionText(messages);
  if (!q) return { prompt, question: null };
  const content = messageText(messages[q.message]);
  const at = content.lastIndexOf(q.text);
  const marked = messages.map((m, i) =>
    i === q.message ? { ...m, content: content.slice(0, at) + MARK + content.slice(at) } : m,
  );
  const markedText = renderChat(template, marked);
  const charFrom = markedText.indexOf(MARK);
  // A template that rewrites the content (or a message already holding the mark) gives no exact span: none rather than a guess.
  if (
    charFrom < 0 ||
    markedText.indexOf(MARK, charFrom + 1) >= 0 ||
    markedText.slice(0, charFrom) + markedText.slice(charFrom + 1) !== text
  )
    return { prompt, question: null };
  return { prompt, question: tokenSpanOf(tok, text, prompt, charFrom, charFrom + q.text.length) };
}

import { renderChatTemplate } from '../model/chat-template.js';
import type { Manifest } from '../model/manifest.js';
import type { ChatMessage } from './schemas.js';

export type ChatTemplate = Manifest['chatTemplate'];

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
    return renderChatTemplate(template.template, msgs, { bosToken: template.bosToken, eosToken: template.eosToken, addGenerationPrompt: true });
  }
  let out = '';
  for (const m of messages) {
    const role = m.role === 'developer' ? 'system' : m.role;
    // split/join rather than replace(): message text must never be read as a replacement pattern ("$&").
    out += template[role].split('{content}').join(messageText(m));
  }
  return out + template.generationPrompt;
}

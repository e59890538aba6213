import { Template } from '@huggingface/jinja';

/**
 * Rendering a model's own chat template (GGUF tokenizer.chat_template, or chat_template in a
 * tokenizer_config.json) to the prompt text the model was trained on. The text still has to be encoded,
 * with the template's control tokens written out, e.g. "<|im_start|>".
 */

export interface ChatMessage {
  role: string;
  content: string;
}

/**
 * A chat template that does not parse, or fails while rendering (including its own raise_exception, which
 * templates use to refuse e.g. a system message they do not support). `cause` is the engine's error.
 */
export class ChatTemplateError extends Error {
  override name = 'ChatTemplateError';
  constructor(
    readonly stage: 'parse' | 'render',
    cause: unknown,
  ) {
    const detail = cause instanceof Error ? cause.message : String(cause);
    super(`chat template: ${stage === 'parse' ? 'does not parse' : 'failed to render'}: ${detail}`, { cause });
  }
}

/**
 * The variables are the ones Hugging Face's apply_chat_template passes: messages, bos_token, eos_token,
 * add_generation_prompt (raise_exception and strftime_now come with the Jinja engine).
 */
export function renderChatTemplate(
  template: string,
  messages: ChatMessage[],
  opts: { bosToken: string; eosToken: string; addGenerationPrompt: boolean },
): string {
  let parsed: Template;
  try {
    parsed = new Template(template);
  } catch (e) {
    throw new ChatTemplateError('parse', e);
  }
  try {
    return parsed.render({
      messages,
      bos_token: opts.bosToken,
      eos_token: opts.eosToken,
      add_generation_prompt: opts.addGenerationPrompt,
    });
  } catch (e) {
    throw new ChatTemplateError('render', e);
  }
}

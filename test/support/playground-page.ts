/**
 * Driving the playground page (src/playground/index.html) from a browser test: one message sent,
 * and its reply as the page shows it, whichever path (server or in-browser) produced it.
 */
import type { Locator, Page } from 'playwright-core';
import { expect } from 'vitest';

/**
 * Sends `text` and waits until its reply is done (a failed reply fails the test, with its text).
 * Returns the reply's element, its text, and the lengths its text had, in order: the page sets the
 * text once per streamed delta, each time as a new text node, so a MutationObserver sees every
 * length even when several deltas arrive in one read.
 */
export async function sendAndWatch(
  page: Page,
  text: string,
  timeoutMs: number,
): Promise<{ reply: Locator; text: string; lengths: number[] }> {
  await page.evaluate(() => {
    const w = window as unknown as { lengths: number[] };
    w.lengths = [];
    new MutationObserver((records) => {
      for (const r of records) {
        const target = r.target as Element;
        if (!target.classList?.contains('text') || !target.parentElement?.classList.contains('assistant')) continue;
        for (const n of Array.from(r.addedNodes))
          if (n.nodeType === Node.TEXT_NODE) w.lengths.push((n as Text).data.length);
      }
    }).observe(document.getElementById('log')!, { childList: true, subtree: true });
  });
  const before = await page.locator('.msg.assistant').count();
  await page.fill('#input', text);
  await page.click('#send');
  const reply = page.locator('.msg.assistant').nth(before);
  await expect
    .poll(() => reply.getAttribute('data-state'), { timeout: timeoutMs, interval: 250 })
    .toMatch(/^(done|error)$/);
  expect(await reply.getAttribute('data-state'), (await reply.textContent()) ?? '').toBe('done');
  return {
    reply,
    text: (await reply.locator('.text').textContent()) ?? '',
    lengths: await page.evaluate(() => (window as unknown as { lengths: number[] }).lengths),
  };
}

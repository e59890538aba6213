import { expect } from 'vitest';
import { ModelFormatError } from '../../src/model/errors.js';

/** Asserts that fn throws a ModelFormatError whose message contains every fragment. */
export function expectFormatError(fn: () => unknown, ...fragments: string[]): ModelFormatError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ModelFormatError);
  const e = err as ModelFormatError;
  for (const f of fragments) expect(e.message).toContain(f);
  return e;
}

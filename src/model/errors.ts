/**
 * Raised when a model file (checkpoint, tokenizer, manifest, shard) is not what it claims to be.
 * The message always names the file, what was expected and what was found, because the user
 * fixing it usually has several candidate files on disk.
 */
export class ModelFormatError extends Error {
  override name = 'ModelFormatError';
  constructor(
    readonly file: string,
    readonly expected: string,
    readonly found: string,
  ) {
    super(`${file}: expected ${expected}, found ${found}`);
  }
}

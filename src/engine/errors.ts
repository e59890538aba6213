/** Errors of the engine layer: bad options or states the engine refuses. HTTP maps these to 4xx. */
export class EngineError extends Error {
  override name = 'EngineError';
  constructor(
    message: string,
    /** Stable machine-readable reason, e.g. 'invalid_schedule', 'context_length_exceeded'. */
    readonly code: string,
    /** The option at fault, when there is one. */
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

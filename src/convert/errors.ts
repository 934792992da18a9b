/** The one error type conversion throws for bad or unsupported input. */

/**
 * A checkpoint, tokenizer or option that cannot be converted. The message always starts with the file (or
 * argument) at fault, then says what is wrong with it, so a user can act on it without a stack trace.
 */
export class ConversionError extends Error {
  override name = "ConversionError";

  constructor(
    /** The file, directory or argument the problem is in. */
    readonly file: string,
    /** What is wrong, without the file name. */
    readonly problem: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}: ${problem}`, options);
  }
}

/** A model named by a path or id that is neither on this machine nor, as an id, reachable on the Hub. */
export class ModelNotFoundError extends Error {
  override name = "ModelNotFoundError";

  constructor(
    readonly model: string,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super(`${model}: ${problem}`, options);
  }
}

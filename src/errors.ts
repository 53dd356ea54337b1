/**
 * The one error base of the tool. Every failure a user can act on is a
 * {@link MigrateError}: a stable `code`, a message that says what happened, a
 * `hint` that says what to do next, and the exit code of DESIGN §4. Anything
 * else that reaches the CLI entry is a bug and is printed with its stack.
 */

/** Exit codes of DESIGN §4. The CLI entry is the only place that uses them. */
export const ExitCode = {
  ok: 0,
  findings: 1,
  usage: 2,
  server: 3,
  refused: 4,
  interrupted: 130,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export interface MigrateErrorOptions {
  hint?: string;
  /** JSON-safe details for `--format json` (never values or secrets). */
  details?: Record<string, unknown>;
  cause?: unknown;
}

export class MigrateError extends Error {
  readonly code: string;
  readonly exitCode: ExitCode;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown>;

  constructor(code: string, exitCode: ExitCode, message: string, options: MigrateErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.exitCode = exitCode;
    this.hint = options.hint;
    this.details = options.details ?? {};
  }
}

/** Invalid flags, arguments or configuration (exit 2). */
export class UsageError extends MigrateError {
  constructor(code: string, message: string, options?: MigrateErrorOptions) {
    super(code, ExitCode.usage, message, options);
  }
}

/** A server is unreachable, refused the credentials, or failed (exit 3). */
export class ServerError extends MigrateError {
  constructor(code: string, message: string, options?: MigrateErrorOptions) {
    super(code, ExitCode.server, message, options);
  }
}

/** A safety guard or a precondition refused the work (exit 4). */
export class RefusedError extends MigrateError {
  constructor(code: string, message: string, options?: MigrateErrorOptions) {
    super(code, ExitCode.refused, message, options);
  }
}

/** The user interrupted a one-shot command (exit 130). */
export class InterruptedError extends MigrateError {
  constructor(message: string, options?: MigrateErrorOptions) {
    super('interrupted', ExitCode.interrupted, message, options);
  }
}

/**
 * Where an error code is explained: its own section of the README's
 * "Troubleshooting" (an explicit `<a id="error-<code>">` anchor, so renaming a
 * heading never breaks it). There is no public URL; the path works in a
 * checkout, the installed package and on any Git host that renders READMEs.
 */
export function errorDocs(code: string): string {
  return `README.md#error-${code}`;
}

/** An error as stderr says it in text: `error[code]: message`, its next step and where the README explains it. */
export function errorText(e: MigrateError): string {
  return `error[${e.code}]: ${e.message}\n${e.hint ? `  next: ${e.hint}\n` : ''}  see: ${errorDocs(e.code)}\n`;
}

/** An error as `--format json` carries it: `{"code", "message", "hint", …details, "docs"}`. */
export function errorJson(e: MigrateError): Record<string, unknown> {
  return { code: e.code, message: e.message, hint: e.hint ?? null, ...e.details, docs: errorDocs(e.code) };
}

/**
 * Recognise typed errors by shape as well as by class: vitest module resets
 * and duplicated installs can give two copies of the class.
 */
export function isMigrateError(err: unknown): err is MigrateError {
  return (
    err instanceof MigrateError ||
    (typeof err === 'object' &&
      err !== null &&
      typeof (err as MigrateError).code === 'string' &&
      typeof (err as MigrateError).exitCode === 'number' &&
      'hint' in err)
  );
}

import { errorDocs, errorText, type MigrateError } from '../errors.js';
import { scrub } from '../report/redact.js';
import { terminalSafe } from '../report/keys.js';
import type { LoadedConfig } from '../config/load.js';

/** The process facts a command may use, injected so tests can run `main` in-process. */
export interface Io {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
  env: NodeJS.ProcessEnv;
  cwd: string;
  stdinIsTTY: boolean;
  stderrIsTTY: boolean;
}

export type Format = 'text' | 'json' | 'yaml' | 'markdown' | 'junit' | 'hcl';
export type ProgressMode = 'auto' | 'plain' | 'json' | 'none';

/** Options every command takes (DESIGN §4). */
export interface GlobalOptions {
  config?: string;
  format?: string;
  progress?: string;
  etcdEndpoints?: string;
  consulAddr?: string;
  datacenter?: string;
  verbose?: boolean;
}

/**
 * What a command's service and renderer need from the CLI: the output
 * policy computed once. Results go to stdout, everything else to stderr, and
 * every line passes through the secret scrubber.
 */
/**
 * A live view that owns the terminal (ink redraws its lines): a notice written
 * around it, the first Ctrl-C's, is wiped by the next redraw, so it goes into
 * the view's frame. Set while such a view is shown.
 */
let liveNotice: ((message: string) => boolean) | undefined;

export function setLiveNotice(show: ((message: string) => boolean) | undefined): void {
  liveNotice = show;
}

/** A line for the operator on stderr, or in the live view's frame when one is shown (it says whether it took it). */
export function notice(io: Io, message: string): void {
  if (!liveNotice?.(message)) io.stderr.write(`${message}\n`);
}

export class CommandContext {
  readonly format: Format;
  readonly progress: ProgressMode;
  /** Prompts only when stdin and stderr are terminals and CI is unset. */
  readonly interactive: boolean;
  readonly verbose: boolean;
  /**
   * Set by a command whose work is whole although an interrupt came (past its point of no return it
   * finishes, as finalize's deletes after the flip): its exit code stands, not 130.
   */
  whole = false;

  constructor(
    readonly io: Io,
    readonly command: string,
    options: GlobalOptions,
    readonly signal: AbortSignal,
  ) {
    // Commander checked it against the command's formats (format_unsupported, in main.ts).
    this.format = (options.format ?? 'text') as Format;
    // Commander checked it against the modes (progress_unsupported, in main.ts).
    this.progress = (options.progress ?? 'auto') as ProgressMode;
    this.interactive = io.stdinIsTTY && io.stderrIsTTY && !io.env.CI;
    this.verbose = options.verbose ?? false;
  }

  /** Writes the command's result to stdout. */
  result(text: string): void {
    this.io.stdout.write(scrub(text.endsWith('\n') ? text : `${text}\n`));
  }

  /** Writes a diagnostic line to stderr (silent in JSON-progress mode unless it is a warning). */
  log(text: string): void {
    this.io.stderr.write(scrub(terminalSafe(text.endsWith('\n') ? text : `${text}\n`)));
  }

  /** A warning: a `warning:` line, or a `warning` event with --progress json (stderr stays NDJSON). */
  warn(text: string): void {
    if (this.progress === 'json') this.event({ event: 'warning', message: text });
    else this.log(`warning: ${text}`);
  }

  /**
   * migration.yaml (`--config`, MIGRATE_CONFIG, ./migration.yaml; flags,
   * environment and defaults without one), with each of the mapping's
   * warnings said (through `warn`, by default {@link warn}) where it points:
   * `file:line:column: field: what`.
   */
  async loadConfig(configFlag: string | undefined, required: boolean, warn = (text: string) => this.warn(text)): Promise<LoadedConfig> {
    const { loadConfig } = await import('../config/load.js');
    const loaded = loadConfig({ configFlag, env: this.io.env, cwd: this.io.cwd, required });
    for (const w of loaded.mapping.warnings) warn(`${w.file ?? 'migration.yaml'}${w.position ? `:${w.position.line}:${w.position.col}` : ''}: ${w.path}: ${w.message}`);
    return loaded;
  }

  /**
   * The error of a command whose result is written already (a refused cutover's checks), said on stderr as the
   * CLI says every error: an `error[code]` block, or an `error` event with --progress json. stdout keeps one document.
   */
  error(err: MigrateError): void {
    if (this.progress === 'json') this.event({ event: 'error', code: err.code, message: err.message, hint: err.hint ?? null, docs: errorDocs(err.code) });
    else this.log(errorText(err));
  }

  /** One NDJSON progress event on stderr (with --progress json). */
  event(event: Record<string, unknown>): void {
    if (this.progress === 'json') this.io.stderr.write(scrub(`${JSON.stringify({ ts: new Date().toISOString(), ...event })}\n`));
  }
}

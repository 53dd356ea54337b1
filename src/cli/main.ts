import { Command, CommanderError, Option } from 'commander';
import { errorDocs, errorJson, errorText, ExitCode, InterruptedError, isMigrateError, UsageError, type MigrateError } from '../errors.js';
import { renderEnvelope } from '../report/envelope.js';
import { scrub } from '../report/redact.js';
import { terminalSafe } from '../report/keys.js';
import { CommandContext, notice, type Format, type GlobalOptions, type Io } from './context.js';
import { registerCommands } from './commands.js';
import { TOOL_VERSION } from './version.js';
import { STOP_SIGNALS, takeHeldSignals } from './early-signals.js';

export { TOOL_VERSION };

function defaultIo(): Io {
  return {
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
    cwd: process.cwd(),
    stdinIsTTY: Boolean(process.stdin.isTTY),
    stderrIsTTY: Boolean(process.stderr.isTTY),
  };
}

/** A command's body: gets its context, options and positional arguments, returns the exit code. */
export type CommandRunner<O> = (ctx: CommandContext, options: O & GlobalOptions, args: string[]) => Promise<number>;

/** What `registerCommands` uses to add a command with the shared options and error handling. */
export interface CommandRegistrar {
  program: Command;
  add<O>(command: Command, formats: readonly Format[], run: CommandRunner<O>, options?: { oneShot?: boolean }): Command;
}

/** What the command that ran left behind, for `main` to return or report. */
interface Outcome {
  exitCode: number;
  format: Format;
  commandName: string;
}

/**
 * The whole program: every command with the shared options and error
 * handling, not yet parsed. `main` runs it; `completion` and the tests read
 * its definition, so what they see is what the CLI accepts.
 */
export function createProgram(io: Io = defaultIo()): { program: Command; outcome: Outcome } {
  const outcome: Outcome = { exitCode: ExitCode.ok, format: 'text', commandName: '' };
  // Parse errors are reported by `main` like every other error (code, next step, docs), not by commander.
  const output = { writeOut: (s: string) => io.stdout.write(s), writeErr: (s: string) => io.stderr.write(scrub(s)), outputError: () => {} };
  const program = new Command('migrate')
    .description('Move an application\'s data from etcd v3 to HashiCorp Consul: audit, map, copy, dual-run, verify, cut over.')
    .version(TOOL_VERSION, '-V, --version')
    .exitOverride()
    .showSuggestionAfterError()
    .configureOutput(output);

  const registrar: CommandRegistrar = {
    program,
    add(command, formats, run, options = {}) {
      command
        .option('-c, --config <file>', 'migration.yaml (default: $MIGRATE_CONFIG, then ./migration.yaml)')
        .addOption(new Option('--format <format>', 'output format').choices([...formats]).default('text'))
        .addOption(new Option('--progress <mode>', 'progress on stderr').choices(['auto', 'plain', 'json', 'none']).default('auto'))
        .option('--etcd-endpoints <urls>', 'etcd endpoints, comma-separated (env ETCDCTL_ENDPOINTS)')
        .option('--consul-addr <url>', 'Consul HTTP address (env CONSUL_HTTP_ADDR)')
        .option('--datacenter <dc>', 'Consul datacenter (default: the agent\'s own)')
        .option('--verbose', 'print stacks and debug detail')
        .exitOverride()
        .configureOutput(output)
        // Commander passes the positional arguments first, then the options and the command.
        .action(async (...actionArgs: unknown[]) => {
          const cmd = actionArgs[actionArgs.length - 1] as Command;
          const opts = actionArgs[actionArgs.length - 2] as GlobalOptions;
          outcome.commandName = cmd.name();
          outcome.format = (opts.format ?? 'text') as Format;
          const controller = new AbortController();
          const interrupts = options.oneShot === false ? undefined : installInterrupts(controller, io, opts as GlobalOptions & { logFormat?: string });
          try {
            const ctx = new CommandContext(io, outcome.commandName, opts, controller.signal);
            outcome.exitCode = await run(ctx, opts as never, actionArgs.slice(0, -2) as string[]);
            if (controller.signal.aborted && outcome.exitCode === ExitCode.ok && !ctx.whole) outcome.exitCode = ExitCode.interrupted;
          } catch (err) {
            throw asInterrupt(err, controller.signal, outcome.commandName);
          } finally {
            interrupts?.();
          }
        });
      program.addCommand(command);
      return command;
    },
  };
  registerCommands(registrar);
  return { program, outcome };
}

/**
 * What a command's failure is once the operator interrupted it: an interrupt surfaces
 * wherever the command was, often as a request's AbortError, and is reported as the
 * interrupt (exit 130), not as a bug (exit 70). Errors of the tool's own stay as they are.
 */
export function asInterrupt(err: unknown, signal: AbortSignal, command: string): unknown {
  if (!signal.aborted || isMigrateError(err)) return err;
  // A copy goes on where it stopped with --resume (with nothing to resume, it copies the whole mapping).
  const again = command === 'copy' ? 'Run `migrate copy --resume` to go on where it stopped' : `Run \`migrate ${command}\` again`;
  return new InterruptedError(`migrate ${command} was interrupted.`, { hint: `${again} (\`migrate status\` shows where the migration stands).` });
}

/**
 * The CLI entry: parses `argv`, runs one command, and returns its exit code.
 * It never calls `process.exit`; `bin/migrate.js` sets `process.exitCode`.
 */
export async function main(argv: string[], io: Io = defaultIo()): Promise<number> {
  const code = await run(argv, io);
  // The last NDJSON event: a script reading the stream knows the command ended, and how.
  if (stderrJson(argv) === 'events') io.stderr.write(`${JSON.stringify({ ts: new Date().toISOString(), event: 'end', exitCode: code })}\n`);
  return code;
}

async function run(argv: string[], io: Io): Promise<number> {
  const { program, outcome } = createProgram(io);
  try {
    if (argv.length === 0) {
      program.outputHelp({ error: true });
      return ExitCode.usage;
    }
    await program.parseAsync(argv, { from: 'user' });
    return outcome.exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return ExitCode.ok;
      const command = program.commands.find((c) => c.name() === argv[0])?.name() ?? '';
      // Flags before the command (`migrate -c f status`): every flag belongs to a command, so it goes after its name.
      const later = command ? undefined : argv.find((a) => program.commands.some((c) => c.name() === a));
      const error = later && err.code === 'commander.unknownOption'
        ? new UsageError('usage_invalid', `${err.message.replace(/^error: /, '').split('\n')[0]} before the command: flags go after the command's name.`, { hint: `Run \`migrate ${[later, ...argv.filter((a) => a !== later)].join(' ')}\`.` })
        : commandLineError(err, command);
      return reportError(error, io, jsonRequested(argv) ? 'json' : 'text', later ?? command, stderrJson(argv));
    }
    return reportError(err, io, outcome.format, outcome.commandName, stderrJson(argv));
  }
}

/** A command line commander cannot parse (an unknown command or flag, a missing value, a value not among the choices), as a usage error. */
function commandLineError(err: CommanderError, command: string): UsageError {
  const [first = '', ...rest] = err.message.replace(/^error: /, '').split('\n');
  // Commander's "(Did you mean --format?)" becomes the first half of the hint.
  const suggestion = rest.map((line) => line.replace(/^\((.*)\)$/, '$1')).filter(Boolean).join(' ');
  const help = command ? `\`migrate ${command} --help\` lists its flags.` : '`migrate --help` lists the commands.';
  // A --format the command does not write is the documented format_unsupported, with what it does write.
  const format = /^option '--format <format>' argument '(.*)' is invalid\. Allowed choices are (.*)\.$/.exec(first);
  if (format) return new UsageError('format_unsupported', `migrate ${command} has no --format ${format[1]}; it writes ${format[2]}.`, { hint: `Use --format ${format[2]!.split(', ').join(' or --format ')}.` });
  const progress = /^option '--progress <mode>' argument '(.*)' is invalid\./.exec(first);
  if (progress) return new UsageError('progress_unsupported', `--progress ${progress[1]} is not a progress mode.`, { hint: 'Use --progress auto, plain, json or none.' });
  return new UsageError('usage_invalid', first, { hint: suggestion ? `${suggestion} ${help}` : help });
}

/** Whether the command line asks for JSON output, so that a parse error is a JSON document too. */
function jsonRequested(argv: readonly string[]): boolean {
  return argv.some((arg, i) => arg === '--format=json' || (arg === '--format' && argv[i + 1] === 'json'));
}

/**
 * Whether stderr carries JSON lines, so that an error is one such line too: the dual-run's log
 * lines (`--log-format json`), or the NDJSON events of `--progress json`.
 */
function stderrJson(argv: readonly string[]): StderrJson {
  const given = (flag: string) => argv.some((arg, i) => arg === `${flag}=json` || (arg === flag && argv[i + 1] === 'json'));
  return given('--log-format') ? 'log' : given('--progress') ? 'events' : undefined;
}

type StderrJson = 'log' | 'events' | undefined;

/**
 * First Ctrl-C (or SIGTERM, or SIGHUP: the terminal closed): abort between batches; second: leave at once (DESIGN §4, atlas' two stages).
 * The notice is an NDJSON line where stderr carries NDJSON (`--progress json`, the dual-run's `--log-format json`).
 */
function installInterrupts(controller: AbortController, io: Io, opts: { progress?: string; logFormat?: string }): () => void {
  let count = 0;
  const onSignal = () => {
    count++;
    if (count === 1) {
      // Every command: a copy finishes its batch and records its progress, a cutover stops before its flip, ...
      // (what each records, if anything, its own last line says: verify, say, records nothing).
      const message = 'interrupt received: stopping at the next safe point (Ctrl-C again to quit now)';
      const ts = new Date().toISOString();
      if (opts.progress === 'json') io.stderr.write(`${JSON.stringify({ ts, event: 'interrupt', message })}\n`);
      else if (opts.logFormat === 'json') io.stderr.write(`${JSON.stringify({ ts, level: 'info', msg: message })}\n`);
      else notice(io, message);
      controller.abort(new InterruptedError('interrupted'));
    } else {
      process.exit(ExitCode.interrupted);
    }
  };
  for (const signal of STOP_SIGNALS) process.on(signal, onSignal);
  for (const _ of takeHeldSignals()) onSignal();
  return () => {
    for (const signal of STOP_SIGNALS) process.off(signal, onSignal);
  };
}

function reportError(err: unknown, io: Io, format: Format, command: string, stderr: StderrJson): number {
  const line = (doc: object) => io.stderr.write(scrub(`${JSON.stringify({ ts: new Date().toISOString(), ...doc })}\n`));
  if (isMigrateError(err)) {
    const e = err as MigrateError;
    if (stderr === 'log') line({ level: 'error', msg: e.message, code: e.code, hint: e.hint ?? null, docs: errorDocs(e.code) });
    else if (stderr === 'events') line({ event: 'error', code: e.code, message: e.message, hint: e.hint ?? null, docs: errorDocs(e.code) });
    else io.stderr.write(scrub(terminalSafe(errorText(e))));
    if (format === 'json') {
      io.stdout.write(scrub(renderEnvelope(command, e.exitCode === ExitCode.refused ? 'refused' : 'error', { error: errorJson(e) })));
    }
    return e.exitCode;
  }
  const error = err instanceof Error ? err : new Error(String(err));
  const bug = `internal error: this is a bug in migrate ${TOOL_VERSION}; please report it`;
  if (stderr === 'log') line({ level: 'error', msg: bug, code: 'internal_error', stack: error.stack ?? error.message });
  else if (stderr === 'events') line({ event: 'error', code: 'internal_error', message: bug, stack: error.stack ?? error.message });
  else io.stderr.write(scrub(`internal error: this is a bug in migrate ${TOOL_VERSION}; please report it with the output below.\n${error.stack ?? error.message}\n`));
  if (format === 'json') io.stdout.write(scrub(renderEnvelope(command, 'error', { error: { code: 'internal_error', message: error.message, docs: errorDocs('internal_error') } })));
  return 70;
}

import { once } from 'node:events';
import { resolve } from 'node:path';
import { Command } from 'commander';
import { ExitCode, UsageError } from '../../errors.js';
import type { ExportSink } from '../../export/export.js';
import type { GlobalOptions } from '../context.js';
import type { CommandRegistrar } from '../main.js';

export function registerExport({ add }: CommandRegistrar): void {
  add(
    new Command('export')
      .description('write the mapped keyspace at one pinned etcd revision as `consul kv import` JSON (values base64), for air-gapped moves')
      .requiredOption('-o, --out <file>', 'the JSON file to write (values are in it: keep it as secret as the keyspace)')
      .addHelpText('after', '\nExample:\n  migrate export --out kv.json && consul kv import @kv.json\n'),
    ['text', 'json'],
    async (ctx, options: { out: string } & GlobalOptions) => {
      const { resolveConnections } = await import('../../config/connections.js');
      const { EtcdSource } = await import('../../stores/etcd.js');
      const { runExport } = await import('../../export/export.js');
      const { WholeFile } = await import('../../export/whole-file.js');
      const { renderEnvelope } = await import('../../report/envelope.js');
      const loaded = await ctx.loadConfig(options.config, true);
      const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd, loaded.file);
      const source = new EtcdSource(connections.source);
      // To standard output (`--out /dev/stdout | consul kv import -`): written to this process's stdout, whatever
      // it is (a pipe, a socket, which cannot be opened by name), and what was done is said on stderr.
      const toStdout = STDOUT_NAMES.includes(options.out);
      // Else replaces an earlier export only once whole: a failed export leaves no cut-off file.
      const out = toStdout ? stdoutSink(process.stdout, ctx.io.stderr) : new WholeFile(resolve(ctx.io.cwd, options.out), { replace: true, flag: '--out' });
      try {
        const result = await runExport({ source, config: loaded.config, mapping: loaded.mapping }, () => out.open(), { signal: ctx.signal, onWarning: (message) => ctx.warn(message) });
        await out.commit();
        const say = toStdout ? (text: string) => ctx.log(text) : (text: string) => ctx.result(text);
        if (ctx.format === 'json') say(renderEnvelope('export', 'ok', { file: options.out, ...result }));
        else {
          const skipped = Object.entries(result.skipped).flatMap(([rule, reasons]) => Object.entries(reasons).map(([reason, n]) => `  ${rule}: ${n} key(s) not exported: ${reason}`));
          say([
            `Exported ${result.exported} key(s), ${result.bytes} bytes of values, at etcd revision ${result.revision} to ${options.out}.`,
            ...skipped,
            ...(result.leasedAsPlain ? [`  ${result.leasedAsPlain} leased key(s) exported as plain keys: \`consul kv import\` cannot attach sessions, so they will not expire in Consul.`] : []),
          ].join('\n'));
        }
        return ExitCode.ok;
      } finally {
        await out.drop();
        source.close();
      }
    },
  );
}

const STDOUT_NAMES = ['/dev/stdout', '/dev/fd/1', '/proc/self/fd/1'];

/** Exit code of a program whose reader went away (128 + SIGPIPE), as shells report one killed by SIGPIPE. */
const EXIT_BROKEN_PIPE = 141;

/**
 * The export into this process's standard output: started once (what went out cannot be taken back).
 * A reader that goes away first (`| head`) leaves the import with part of the keyspace: that is said
 * on stderr, and the exit is 141, not 0 (bin/migrate.js ends the process on EPIPE with the exit code set).
 */
function stdoutSink(stdout: NodeJS.WritableStream, stderr: { write(text: string): unknown }): { open(): ExportSink; commit(): Promise<void>; drop(): void } {
  let opened = false;
  const onError = (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') return;
    stderr.write('error[file_unwritable]: standard output was closed before the export was whole: whatever read it got part of the keyspace.\n  next: Run `migrate export` again into a file (--out kv.json), or into a reader that reads to the end.\n');
    process.exitCode = EXIT_BROKEN_PIPE;
  };
  return {
    open() {
      if (opened) throw new UsageError('file_unwritable', 'Cannot write standard output (--out /dev/stdout) again: what was written into it cannot be taken back to start again.', { hint: 'Write the export to a file (--out kv.json).' });
      opened = true;
      stdout.prependListener('error', onError);
      return {
        write: async (chunk) => {
          if (!stdout.write(chunk)) await once(stdout, 'drain');
        },
        discard: () => undefined,
      };
    },
    commit: async () => undefined,
    drop: () => {
      stdout.removeListener('error', onError);
    },
  };
}

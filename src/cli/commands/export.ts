import { resolve } from 'node:path';
import { Command } from 'commander';
import { ExitCode } from '../../errors.js';
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
      const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd);
      const source = new EtcdSource(connections.source);
      // Replaces an earlier export only once whole: a failed export leaves no cut-off file.
      const out = new WholeFile(resolve(ctx.io.cwd, options.out), { replace: true, flag: '--out' });
      try {
        const result = await runExport({ source, config: loaded.config, mapping: loaded.mapping }, () => out.open(), { signal: ctx.signal, onWarning: (message) => ctx.warn(message) });
        await out.commit();
        if (ctx.format === 'json') ctx.result(renderEnvelope('export', 'ok', { file: options.out, ...result }));
        else {
          const skipped = Object.entries(result.skipped).flatMap(([rule, reasons]) => Object.entries(reasons).map(([reason, n]) => `  ${rule}: ${n} key(s) not exported: ${reason}`));
          ctx.result([
            `Exported ${result.exported} key(s), ${result.bytes} bytes of values, at etcd revision ${result.revision} to ${options.out}.`,
            ...skipped,
            ...(result.leasedAsPlain ? [`  ${result.leasedAsPlain} leased key(s) exported as plain keys: \`consul kv import\` cannot attach sessions, so they will not expire in Consul.`] : []),
          ].join('\n'));
        }
        return ExitCode.ok;
      } finally {
        out.drop();
        source.close();
      }
    },
  );
}

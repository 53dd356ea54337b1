import { Command } from 'commander';
import { ExitCode, UsageError } from '../../errors.js';
import type { GlobalOptions } from '../context.js';
import type { CommandRegistrar } from '../main.js';
import { parseDuration, wholeNumber } from './audit-flags.js';

interface ProbeFlags {
  samples?: string;
  interval?: string;
  wait?: string;
  etcdPrefix?: string;
}

export function registerProbeLatency({ add }: CommandRegistrar): void {
  add(
    new Command('probe-latency')
      .description('how long a watcher takes to see a change: etcd watch vs Consul blocking query, on scratch keys (written and deleted)')
      .option('--samples <n>', 'changes to time on each side', '50')
      .option('--interval <duration>', 'pause between samples', '200ms')
      .option('--wait <duration>', 'the `wait` of the Consul blocking query (≤ 10m), as your applications will use it', '60s')
      .option('--etcd-prefix <prefix>', 'the etcd folder for the scratch key (default: <state.prefix><id>/scratch/; must lie outside every copy rule)')
      .addHelpText('after', `
Writes one scratch key in etcd and one in Consul (under the migration's state
prefix), times --samples changes on each, then deletes both. --format markdown
adds what the difference means for applications that move from etcd watches to
Consul blocking queries.

Examples:
  migrate probe-latency
  migrate probe-latency --samples 200 --interval 50ms --wait 5m --format markdown > latency.md
`),
    ['text', 'json', 'markdown'],
    async (ctx, options: ProbeFlags & GlobalOptions) => {
      const samples = wholeNumber('--samples', options.samples, 50, 1);
      const intervalMs = parseDuration('--interval', options.interval) ?? 200;
      const waitMs = parseDuration('--wait', options.wait) ?? 60_000;
      if (waitMs < 1000 || waitMs > 600_000) {
        throw new UsageError('flag_invalid', `--wait must be between 1s and 10m (Consul's limit for blocking queries), not ${options.wait}.`, { hint: 'Pass --wait 60s, or the wait your applications use.' });
      }
      const { resolveConnections } = await import('../../config/connections.js');
      const { openStores } = await import('../stores.js');
      const { statePaths } = await import('../../state/state.js');
      const { findRule } = await import('../../mapping/route.js');
      const { probeLatency } = await import('../../probe/latency.js');
      const { renderLatencyMarkdown, renderLatencyText } = await import('../../probe/render.js');
      const { renderEnvelope } = await import('../../report/envelope.js');
      const loaded = await ctx.loadConfig(options.config, true);
      const scratch = statePaths(loaded.config.state.prefix, loaded.config.id).scratch;
      const etcdFolder = options.etcdPrefix ?? scratch;
      if (!etcdFolder.endsWith('/')) {
        throw new UsageError('flag_invalid', `--etcd-prefix must end with "/", not ${JSON.stringify(etcdFolder)}.`, { hint: `Pass --etcd-prefix ${etcdFolder}/` });
      }
      const rule = findRule(loaded.mapping, Buffer.from(`${etcdFolder}latency-probe`));
      if (rule && rule.action === 'copy') {
        throw new UsageError('probe_scratch_mapped', `The etcd scratch folder ${etcdFolder} lies under rule "${rule.name}" (from ${rule.from}): the dual-run would copy the probe's key into Consul.`, {
          hint: 'Pass --etcd-prefix with a folder outside every copy rule (one the etcd user may write).',
        });
      }
      const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd, loaded.file);
      const stores = openStores(connections, loaded.config);
      try {
        if (ctx.progress !== 'none' && ctx.format === 'text') ctx.log(`probing: ${samples} sample(s) on each side, ${intervalMs} ms apart`);
        let lastLogged = Date.now();
        const report = await probeLatency(stores.source, stores.target, {
          samples,
          intervalMs,
          waitSeconds: Math.round(waitMs / 1000),
          etcdFolder,
          consulFolder: scratch,
          signal: ctx.signal,
          onSample: (done, total) => {
            ctx.event({ event: 'progress', done, total });
            if (ctx.progress !== 'json' && ctx.progress !== 'none' && (Date.now() - lastLogged > 2000 || done === total)) {
              lastLogged = Date.now();
              ctx.log(`probing: ${done}/${total} samples`);
            }
          },
        });
        if (ctx.format === 'json') ctx.result(renderEnvelope('probe-latency', 'ok', { migration: loaded.config.id, ...report }));
        else ctx.result(ctx.format === 'markdown' ? renderLatencyMarkdown(report) : renderLatencyText(report));
        return ExitCode.ok;
      } finally {
        stores.close();
      }
    },
  );
}

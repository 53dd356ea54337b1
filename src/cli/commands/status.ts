import { relative } from 'node:path';
import { Command } from 'commander';
import { ExitCode, isMigrateError } from '../../errors.js';
import type { GlobalOptions } from '../context.js';
import type { CommandRegistrar } from '../main.js';
import { parseDuration } from './audit-flags.js';

export function registerStatus({ add }: CommandRegistrar): void {
  add(
    new Command('status')
      .description('per rule: phase, owner, keys, dual-run lag, last verify and its age, trips, and the next step (reads only)')
      .option('--max-verify-age <duration>', 'a verify older than this is called stale in the next step', '15m')
      .addHelpText('after', '\nExamples:\n  migrate status\n  migrate status --format markdown >> "$GITHUB_STEP_SUMMARY"\n'),
    ['text', 'json', 'markdown'],
    async (ctx, options: { maxVerifyAge?: string } & GlobalOptions) => {
      const maxVerifyAgeMs = parseDuration('--max-verify-age', options.maxVerifyAge) ?? 15 * 60_000;
      const { resolveConnections } = await import('../../config/connections.js');
      const { openStores, openDatacenters, datacenterFlag } = await import('../stores.js');
      const { namesDatacenters } = await import('../../mapping/datacenters.js');
      const { runStatus } = await import('../../cutover/status.js');
      const { renderStatus, renderStatusDatacenters } = await import('../../cutover/render.js');
      const loaded = await ctx.loadConfig(options.config, true);
      const configName = loaded.file ? relative(ctx.io.cwd, loaded.file) : undefined;
      const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd, loaded.file);
      const { source, target, close } = openStores(connections, loaded.config);
      try {
        const lanes = await openDatacenters(loaded, target, datacenterFlag(connections));
        if (!namesDatacenters(loaded.config)) {
          const result = await runStatus({ source, target: lanes[0]!.target, config: lanes[0]!.config, mapping: lanes[0]!.mapping }, { now: () => new Date(), maxVerifyAgeMs });
          ctx.result(renderStatus(result, ctx.format, configName));
          return ExitCode.ok;
        }
        // One status per datacenter, each of its own rules; one that does not answer says so, the others still show.
        const entries = await Promise.all(lanes.map(async (lane) => {
          const mapping = { ...lane.mapping, rules: lane.mapping.rules.filter((r) => lane.rules.includes(r.name)) };
          try {
            return { datacenter: lane.datacenter, result: await runStatus({ source, target: lane.target, config: lane.config, mapping }, { now: () => new Date(), maxVerifyAgeMs, datacenter: lane.datacenter }) };
          } catch (err) {
            if (!isMigrateError(err) || err.exitCode !== ExitCode.server) throw err;
            return { datacenter: lane.datacenter, error: err };
          }
        }));
        ctx.result(renderStatusDatacenters(loaded.config.id, entries, ctx.format, configName));
        return entries.some((e) => e.error) ? ExitCode.server : ExitCode.ok;
      } finally {
        close();
      }
    },
  );
}

import { Command } from 'commander';
import { ExitCode } from '../../errors.js';
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
      const { loadConfig } = await import('../../config/load.js');
      const { resolveConnections } = await import('../../config/connections.js');
      const { openStores } = await import('../stores.js');
      const { runStatus } = await import('../../cutover/status.js');
      const { renderStatus } = await import('../../cutover/render.js');
      const loaded = loadConfig({ configFlag: options.config, env: ctx.io.env, cwd: ctx.io.cwd, required: true });
      const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd);
      const { source, target, close } = openStores(connections, loaded.config);
      try {
        const result = await runStatus({ source, target, config: loaded.config, mapping: loaded.mapping }, { now: () => new Date(), maxVerifyAgeMs });
        ctx.result(renderStatus(result, ctx.format));
        return ExitCode.ok;
      } finally {
        close();
      }
    },
  );
}

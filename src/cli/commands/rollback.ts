import { Command } from 'commander';
import { ExitCode } from '../../errors.js';
import type { GlobalOptions } from '../context.js';
import type { CommandRegistrar } from '../main.js';
import { collect } from './audit-flags.js';
import { DRAIN_OPTION, drainMs, openForTransition, type TransitionFlags } from './cutover-shared.js';

export function registerRollback({ add }: CommandRegistrar): void {
  add(
    new Command('rollback')
      .description('move cut-over rules back to etcd: the reverse mirror stops, etcd → Consul resumes; gated on parity of the rule')
      .requiredOption('--rule <name>', 'a rule to roll back (repeatable)', collect, [])
      .option('--catch-up-timeout <duration>', 'how long to wait for the dual-run\'s checkpoint to reach etcd\'s current revision', '10s')
      .option('--acknowledge-trips', 'clear recorded late writes / guard trips of these rules (recorded in the history)')
      .option(...DRAIN_OPTION)
      .option('-y, --yes', 'confirm without a prompt (required off a terminal)')
      .addHelpText('after', '\nExit codes: 0 rolled back, 2 usage (or no --yes off a terminal), 3 a server failed, 4 a precondition failed (nothing changed).\n\nExample:\n  migrate rollback --rule app --yes\n'),
    ['text', 'json'],
    async (ctx, options: TransitionFlags & GlobalOptions) => {
      const { runRollback } = await import('../../cutover/cutover.js');
      const { refusal, renderCutover } = await import('../../cutover/render.js');
      const open = await openForTransition(ctx, options, 'rollback');
      try {
        const result = await runRollback(open.deps, { ...open.common, drainMs: drainMs(options), verifyRule: (rule) => open.verify(rule), ...(open.confirm ? { confirm: open.confirm } : {}) });
        ctx.result(renderCutover(result, ctx.format, open.ruleArg));
        if (result.refused) ctx.error(refusal(result));
        // Stopped by an interrupt before its flip it throws; here it is done (refused, or moved and finished after the flip).
        ctx.whole = true;
        return result.refused ? ExitCode.refused : ExitCode.ok;
      } finally {
        open.stores.close();
      }
    },
  );
}

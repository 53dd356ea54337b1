import { resolve } from 'node:path';
import { Command } from 'commander';
import { ExitCode } from '../../errors.js';
import type { GlobalOptions } from '../context.js';
import type { CommandRegistrar } from '../main.js';
import { collect } from './audit-flags.js';
import { openForTransition, type TransitionFlags } from './cutover-shared.js';

export function registerFinalize({ add }: CommandRegistrar): void {
  add(
    new Command('finalize')
      .description('end the migration of cut-over rules: stop mirroring them for good; optionally export and delete their etcd keys (never keep rules)')
      .requiredOption('--rule <name>', 'a cut-over rule to finalize (repeatable)', collect, [])
      .option('--export-etcd <file>', 'first write the rule\'s etcd keys to this file (JSON, keys and values base64, mode 0600)')
      .option('--delete-etcd', 'then delete the rule\'s etcd keys (keys of nested and keep rules are never touched)')
      .option('--catch-up-timeout <duration>', 'how long --delete-etcd waits for the running dual-run to say that its reverse mirror of the rule stopped (else it deletes nothing; run it again)', '10s')
      .option('--acknowledge-trips', 'clear recorded late writes / guard trips of these rules (recorded in the history)')
      .option('-y, --yes', 'confirm without a prompt (required off a terminal)')
      .addHelpText('after', '\nExit codes: 0 finalized, 2 usage (or no --yes off a terminal), 3 a server failed, 4 a precondition failed (nothing changed).\n\nExamples:\n  migrate finalize --rule app --yes\n  migrate finalize --rule app --export-etcd app-etcd.json --delete-etcd --yes\n  migrate finalize --rule app --delete-etcd --yes    # again, on a finalized rule: deletes the etcd keys left\n'),
    ['text', 'json'],
    async (ctx, options: TransitionFlags & GlobalOptions) => {
      const { runFinalize } = await import('../../cutover/cutover.js');
      const { refusal, renderCutover } = await import('../../cutover/render.js');
      const open = await openForTransition(ctx, options, 'finalize');
      try {
        const result = await runFinalize(open.deps, {
          ...open.common,
          deleteEtcd: Boolean(options.deleteEtcd),
          onWarning: (message: string) => ctx.warn(message),
          ...(options.exportEtcd ? { exportEtcd: resolve(ctx.io.cwd, options.exportEtcd) } : {}),
          ...(open.confirm ? { confirm: open.confirm } : {}),
        });
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

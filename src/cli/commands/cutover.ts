import { resolve } from 'node:path';
import { Command } from 'commander';
import { ExitCode } from '../../errors.js';
import type { GlobalOptions } from '../context.js';
import type { CommandRegistrar } from '../main.js';
import { collect, parseDuration } from './audit-flags.js';
import { DRAIN_OPTION, drainMs, openForTransition, type TransitionFlags } from './cutover-shared.js';

interface CutoverFlags extends TransitionFlags {
  maxVerifyAge?: string;
  verifyNow?: boolean;
  rollbackFile?: string;
  snapshot?: string;
}

export function registerCutover({ add }: CommandRegistrar): void {
  add(
    new Command('cutover')
      .description('move rules to Consul: applications write there, the dual-run mirrors them back to etcd; gated on a running, caught-up dual-run and a fresh clean verify (reversible until finalize)')
      .requiredOption('--rule <name>', 'a rule to cut over (repeatable: an application is one or more rules)', collect, [])
      .option('--max-verify-age <duration>', 'the last clean verify must be at most this old', '15m')
      .option('--verify-now', 'run a verify first (it records verify/last) instead of relying on the last one')
      .option('--catch-up-timeout <duration>', 'how long to wait for the dual-run\'s checkpoint to reach etcd\'s current revision', '10s')
      .option('--rollback-file <file>', 'where to export the rule\'s Consul keys as the rollback point (default migrate-rollback/<id>-<rule>-<time>-<pid>.json)')
      .option('--snapshot <file>', 'also save a full Consul snapshot (GET /v1/snapshot; the token needs it)')
      .option('--acknowledge-trips', 'clear recorded late writes / guard trips of these rules (recorded in the history)')
      .option(...DRAIN_OPTION)
      .option('-y, --yes', 'confirm without a prompt (required off a terminal)')
      .addHelpText('after', `
Exit codes: 0 cut over, 2 usage (or no --yes off a terminal), 3 a server failed, 4 a precondition failed (nothing changed).

Examples:
  migrate cutover --rule app --yes
  migrate cutover --rule api --rule api-locks --verify-now --snapshot before-api.snap
`),
    ['text', 'json'],
    async (ctx, options: CutoverFlags & GlobalOptions) => {
      const maxVerifyAgeMs = parseDuration('--max-verify-age', options.maxVerifyAge) ?? 15 * 60_000;
      const { runCutover } = await import('../../cutover/cutover.js');
      const { refusal, renderCutover } = await import('../../cutover/render.js');
      const open = await openForTransition(ctx, options, 'cutover');
      try {
        const result = await runCutover(open.deps, {
          ...open.common,
          drainMs: drainMs(options),
          verifyRule: (rule) => open.verify(rule),
          maxVerifyAgeMs,
          onWarning: (message) => ctx.warn(message),
          ...(options.verifyNow ? { verifyNow: () => open.verify() } : {}),
          ...(options.rollbackFile ? { rollbackFile: resolve(ctx.io.cwd, options.rollbackFile) } : {}),
          ...(options.snapshot ? { snapshotFile: resolve(ctx.io.cwd, options.snapshot) } : {}),
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
